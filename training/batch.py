"""One training batch (docs/training.md): the age shift, both passes through the core, the losses.

Per batch: one age shift for the whole batch, targets clamped to min_age..max_age, the AdaNI
strength from the mean |shift|; pass 1 (LoRA off) without gradients; the identity conditioning
and pass 2 (LoRA on) with gradients through the sampler steps and the VAE decode.
"""

from __future__ import annotations

import random

import torch

from cradle2cane.method.adani import adani_strength
from cradle2cane.method.lora import lora_enabled
from cradle2cane.method.prompts import aging_prompt, encode_prompts

from . import losses as L
from .config import Config, ConfigError

LOSS_WEIGHTS = {  # log name -> config key
    "age_loss": "age_loss_weight",
    "age_loss_2": "age_loss_2_weight",
    "id_cos_loss": "id_cos_loss_weight",
    "pixel_mse_loss": "pixel_mse_loss_weight",
    "ms_ssim_loss": "ssim_loss_weight",
    "lpips_loss": "lpips_loss_weight",
    "g_loss": "g_loss_weight",
}


def sample_shift(rng: random.Random, cfg: Config) -> int:
    """One age shift for a batch: 0 with probability same_age_rate, else uniform integers in
    +/-3*age_scale (or a rounded normal(0, age_scale) clipped there)."""
    if rng.random() < cfg.same_age_rate:
        return 0
    limit = int(round(3 * cfg.age_scale))
    if cfg.age_sample_mode == "normal":
        return int(round(max(-limit, min(limit, rng.gauss(0.0, cfg.age_scale)))))
    return rng.randint(-limit, limit)


def batch_plan(sources: list[int], shift: int, cfg: Config) -> tuple[list[int], float]:
    """Clamped targets and the pass-1 strength from the mean |target - source|."""
    targets = [min(max(s + shift, cfg.min_age), cfg.max_age) for s in sources]
    gap = sum(abs(t - s) for s, t in zip(sources, targets)) / len(sources)
    if not cfg.use_adaptive_noise_inject:
        return targets, cfg.aged_strength
    return targets, adani_strength(gap, cfg.t1, cfg.t2, cfg.one_threshold)


def item_seeds(rng: random.Random, count: int) -> list[int]:
    return [rng.getrandbits(63) for _ in range(count)]


def generator_step(cfg: Config, accelerator, batch, micro_step: int, parts, samplers, identity, lpips, age_model,
                   discriminator):
    """Both passes for one batch and the weighted generator losses: (terms, info, faces, output).

    ``samplers`` are (pass 1 over the raw UNet, pass 2 over the prepared one); ``identity`` is the
    core's ``IdentityEncoder`` over the prepared projectors."""
    device = accelerator.device
    faces = batch["image"].to(device, torch.float32)
    sources = [int(a) for a in batch["age"].tolist()]
    genders = list(batch["gender"])
    count = len(sources)
    rng = random.Random(f"cradle2cane/{cfg.seed}/{accelerator.process_index}/{micro_step}")
    shift = sample_shift(rng, cfg)
    targets, strength = batch_plan(sources, shift, cfg)
    pass1 = [torch.Generator("cpu").manual_seed(s) for s in item_seeds(rng, count)]
    pass2 = [torch.Generator("cpu").manual_seed(s) for s in item_seeds(rng, count)]
    items = list(range(count))
    first, second = samplers
    with accelerator.autocast():
        with torch.no_grad():
            embeds, pooled = encode_prompts(parts.pipe, [aging_prompt(t, g) for t, g in zip(targets, genders)],
                                            device)
            with lora_enabled(parts.unet, False):
                latents = first.run(first.encode(faces), items, strength, embeds, pooled, pass1)
            aged = first.decode(latents)
            encoded_aged = second.encode(aged)
        conditioning = identity(faces, aged, items, sources, targets)
        with lora_enabled(parts.unet, True):
            latents = second.run(encoded_aged, items, cfg.id_strength, conditioning, pooled, pass2)
        output = second.decode(latents)
    terms = loss_terms(cfg, faces, aged, output, targets, lpips, age_model, discriminator, parts.arcface)
    info = {"shift": shift, "strength": strength}
    return terms, info, faces, output

def loss_terms(cfg: Config, faces, aged, output, targets, lpips, age_model, discriminator,
               arcface) -> dict[str, torch.Tensor]:
    """The weighted generator losses (log name -> value), computed in float32."""
    terms: dict[str, torch.Tensor] = {}
    with torch.autocast(device_type=faces.device.type, enabled=False):
        output = output.float()
        if age_model is not None:
            predicted = age_model(output)
            if cfg.age_loss_weight > 0:
                target = torch.tensor(targets, device=output.device, dtype=torch.float32)
                terms["age_loss"] = cfg.age_loss_weight * L.age_loss(predicted.ages, target)
            if cfg.age_loss_2_weight > 0:
                if predicted.features is None:
                    raise ConfigError(f"the age regressor {cfg.age_model_path or 'age_regressor.pt2'} returns no "
                                      f"features, which age_loss_2 needs; return (ages, features) or set "
                                      f"age_loss_2_weight=0")
                with torch.no_grad():
                    reference = age_model(aged.float()).features
                terms["age_loss_2"] = cfg.age_loss_2_weight * L.feature_cosine_loss(predicted.features, reference)
        if cfg.id_cos_loss_weight > 0:
            terms["id_cos_loss"] = cfg.id_cos_loss_weight * L.identity_loss(arcface, faces, output)
        if cfg.pixel_mse_loss_weight > 0:
            terms["pixel_mse_loss"] = cfg.pixel_mse_loss_weight * L.pixel_mse(faces, output,
                                                                              cfg.pixel_mse_loss_use_weight)
        if cfg.ssim_loss_weight > 0:
            terms["ms_ssim_loss"] = cfg.ssim_loss_weight * (1 - L.ms_ssim(output, faces))
        if lpips is not None:
            a, b = faces, output
            if cfg.lpips_loss_use_weight:
                mask = L.centre_weight(a.shape[-2], a.shape[-1], a.device)
                a, b = a * mask, b * mask
            terms["lpips_loss"] = cfg.lpips_loss_weight * lpips(a, b).mean()
        if discriminator is not None and cfg.g_loss_weight > 0:
            terms["g_loss"] = cfg.g_loss_weight * L.generator_hinge_loss(discriminator, output)
    return terms
