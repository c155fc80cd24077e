"""The img2img sampler both passes run on SDXL-Turbo components.

It is diffusers' SDXL img2img reduced to what Cradle2Cane uses (few steps, no CFG,
Euler-ancestral, trailing spacing), written out so that it can batch items of different target
ages and strengths, share the VAE encoding of one input across them, report every UNet call and
stop between calls. It draws its random numbers exactly as ``StableDiffusionXLImg2ImgPipeline``
does with one generator per item, so a batched run equals the item-by-item run, and both equal the
diffusers pipeline for the same seed (tests check both).

With trailing spacing every item that is active at a step is at the same timestep whatever its
strength (4 steps: timesteps 999/749/499/249; strength 0.75 starts at step 1, 0.5 at step 2,
0.25 at step 3), so one UNet call per step carries every strength, cut only by ``batch_size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from .adani import unet_evaluations

StepCallback = Callable[[int, int], None]


@dataclass
class EncodedImages:
    """VAE posterior of the input images, shared by every target age of an image."""

    mean: torch.Tensor  # [B, C, h, w] in the VAE's dtype
    std: torch.Tensor

    @classmethod
    def cat(cls, parts: Sequence["EncodedImages"]) -> "EncodedImages":
        if len(parts) == 1:
            return parts[0]
        return cls(torch.cat([p.mean for p in parts]), torch.cat([p.std for p in parts]))


class Img2ImgSampler:
    """SDXL img2img with per-item generators over explicit parts.

    ``unet`` is any callable with the UNet's signature (the UNet, or a DDP/compiled wrapper of it);
    ``device``/``dtype`` are where and in which precision the latents live, read once here (from the
    VAE when not given) rather than per step. Gradients follow torch's current mode: inference
    wraps calls in ``torch.no_grad()``, training backpropagates through the steps and the decode.
    """

    def __init__(self, unet: Callable[..., Any], vae: torch.nn.Module, scheduler_config: Mapping[str, Any],
                 vae_scale_factor: int, steps: int = 4, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        vae_param = next(vae.parameters())
        self.unet, self.vae = unet, vae
        self.scheduler_config = dict(scheduler_config)
        self.vae_scale_factor = int(vae_scale_factor)
        self.steps = int(steps)
        self.device = torch.device(device) if device is not None else vae_param.device
        self.dtype = dtype or vae_param.dtype
        self.vae_dtype = vae_param.dtype
        self.scaling_factor = float(vae.config.scaling_factor)

    # ---------------------------------------------------------------- VAE

    def encode(self, images: torch.Tensor) -> EncodedImages:
        """images: [B,3,H,W] in 0..1. Normalised to -1..1 in float32, then cast (as diffusers does)."""
        x = (images.to(self.device).float() * 2.0 - 1.0).to(self.vae_dtype)
        dist = self.vae.encode(x).latent_dist
        return EncodedImages(dist.mean, dist.std)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in 0..1, on the device in the VAE's dtype (denormalised as diffusers
        does before it makes PIL images)."""
        latents = latents.to(device=self.device, dtype=self.vae_dtype) / self.scaling_factor
        image = self.vae.decode(latents, return_dict=False)[0]
        return (image / 2 + 0.5).clamp(0, 1).contiguous()  # one layout, whatever the VAE's kernels chose

    # ---------------------------------------------------------------- schedule

    def start_step(self, strength: float) -> int:
        """The step at which an item of ``strength`` joins (diffusers' img2img rule)."""
        return self.steps - unet_evaluations(strength, self.steps)

    def unet_calls(self, strengths: Sequence[float], batch_size: int) -> int:
        """UNet calls ``run`` makes: per step, the items active then, cut into ``batch_size`` rows."""
        starts = [self.start_step(s) for s in strengths]
        return sum(math.ceil(sum(1 for k in starts if k <= step) / batch_size) for step in range(self.steps))

    def _scheduler(self, start: int):
        from diffusers import EulerAncestralDiscreteScheduler

        scheduler = EulerAncestralDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(self.steps, device=self.device)
        scheduler.set_begin_index(start * scheduler.order)
        return scheduler

    # ---------------------------------------------------------------- denoising

    def run(self, encoded: EncodedImages, source_index: Sequence[int], strengths: float | Sequence[float],
            prompt_embeds: torch.Tensor, pooled_embeds: torch.Tensor, generators: Sequence[torch.Generator],
            step: Callable[[], None] | None = None, batch_size: int | None = None) -> torch.Tensor:
        """Denoise N items; returns latents [N,C,h,w] in item order.

        Item i starts from ``encoded`` row ``source_index[i]`` at its strength's start step and
        draws from ``generators[i]`` in diffusers' order: posterior sample, start noise, one
        ancestral noise per step. At each step the active items go through the UNet together, at
        most ``batch_size`` rows per call (default: all); ``step`` is called after every UNet call.
        """
        from diffusers.utils.torch_utils import randn_tensor

        count = len(generators)
        strengths = [strengths] * count if isinstance(strengths, (int, float)) else list(strengths)
        if not count == len(source_index) == len(strengths) == prompt_embeds.shape[0] == pooled_embeds.shape[0]:
            raise ValueError(f"sampler: {count} generators, {len(source_index)} source rows, {len(strengths)} "
                             f"strengths, {prompt_embeds.shape[0]} prompt and {pooled_embeds.shape[0]} pooled "
                             f"embeddings; they must match")
        batch_size = batch_size or count
        device, dtype = self.device, self.dtype
        rows = torch.as_tensor(list(source_index), device=encoded.mean.device)
        mean, std = encoded.mean[rows], encoded.std[rows]
        samples = [randn_tensor(mean[i:i + 1].shape, generator=g, device=mean.device, dtype=mean.dtype)
                   for i, g in enumerate(generators)]
        clean = ((mean + std * torch.cat(samples)).to(dtype) * self.scaling_factor).to(device)
        noise = randn_tensor(clean.shape, generator=list(generators), device=device, dtype=dtype)

        # Items grouped by start step; each group keeps its own scheduler (its step index).
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(strengths):
            groups.setdefault(self.start_step(s), []).append(i)
        schedulers = {start: self._scheduler(start) for start in groups}
        timesteps = next(iter(schedulers.values())).timesteps
        latents: dict[int, torch.Tensor] = {}
        for start, items in groups.items():
            t0 = timesteps[start:start + 1].repeat(len(items))
            latents[start] = schedulers[start].add_noise(clean[items], noise[items], t0)

        height, width = (s * self.vae_scale_factor for s in clean.shape[-2:])
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)
        context = prompt_embeds.to(device, dtype)
        pooled = pooled_embeds.to(device, dtype)
        for k in range(min(groups), self.steps):
            t = timesteps[k]
            active = sorted(start for start in groups if start <= k)
            order = [i for start in active for i in groups[start]]
            model_input = torch.cat([schedulers[start].scale_model_input(latents[start], t) for start in active])
            index = torch.as_tensor(order, device=device)
            predictions = []
            for lo in range(0, len(order), batch_size):
                chunk = index[lo:lo + batch_size]
                added = {"text_embeds": pooled[chunk], "time_ids": time_ids.repeat(len(chunk), 1)}
                predictions.append(self.unet(model_input[lo:lo + batch_size], t, encoder_hidden_states=context[chunk],
                                             added_cond_kwargs=added, return_dict=False)[0])
                if step is not None:
                    step()
            noise_pred = torch.cat(predictions)
            offset = 0
            for start in active:
                items = groups[start]
                latents[start] = schedulers[start].step(
                    noise_pred[offset:offset + len(items)], t, latents[start],
                    generator=[generators[i] for i in items], return_dict=False)[0]
                offset += len(items)

        placed = [i for items in groups.values() for i in items]
        inverse = torch.argsort(torch.as_tensor(placed, device=device))
        return torch.cat([latents[start] for start in groups])[inverse]


class Progress:
    """Counts UNet calls across the passes of one run and reports ``(done, total)``."""

    def __init__(self, total: int, callback: StepCallback | None) -> None:
        self.total, self.done, self.callback = total, 0, callback

    def __call__(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)
