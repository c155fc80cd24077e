"""The training loop of METHOD.md section 5 on accelerate (one or many GPUs, fp16/bf16).

Per batch: one age shift for the whole batch, targets clamped to min_age..max_age, the AdaNI
strength from the mean |shift|; pass 1 (LoRA off) without gradients; the identity conditioning
([SVR-ArcFace token, Rotate-CLIP token]) and pass 2 (LoRA on) with gradients through the sampler
steps and the VAE decode; then the weighted losses. Both passes, the conditioning and the
validation images come from the core (``Img2ImgSampler``, ``Cradle2Cane.identity_embeddings``,
``Cradle2Cane.__call__``), so training and inference cannot drift apart.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cradle2cane.method.sampler import Img2ImgSampler
from cradle2cane.method.adani import adani_strength
from cradle2cane.method.prompts import aging_prompt
from cradle2cane.method.lora import lora_enabled
from cradle2cane.pipeline import Cradle2Cane, FirstPassOutput

from . import losses as L
from .config import Config, ConfigError, dump, require
from .data import DatasetError, FaceDataset, collate, read_manifest

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
LOG_FILE = "train_log.jsonl"
CONFIG_FILE = "config.yml"
VALIDATION_DIR = "validation"
LOSS_WEIGHTS = {  # log name -> config key
    "age_loss": "age_loss_weight",
    "age_loss_2": "age_loss_2_weight",
    "id_cos_loss": "id_cos_loss_weight",
    "pixel_mse_loss": "pixel_mse_loss_weight",
    "ms_ssim_loss": "ssim_loss_weight",
    "lpips_loss": "lpips_loss_weight",
    "g_loss": "g_loss_weight",
}


class TrainingError(RuntimeError):
    """Training cannot start or continue."""


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    losses: dict[str, float] = field(default_factory=dict)
    checkpoints: list[Path] = field(default_factory=list)
    validation_images: list[Path] = field(default_factory=list)
    is_main_process: bool = True


class _UNetCall:
    """A prepared (possibly DDP-wrapped) UNet with the attributes the core sampler reads, so
    pass 2's forward goes through the wrapper and its gradients are synchronised."""

    def __init__(self, wrapped, raw) -> None:
        self._wrapped, self._raw = wrapped, raw

    @property
    def device(self):
        return self._raw.device

    @property
    def dtype(self):
        return self._raw.dtype

    @property
    def config(self):
        return self._raw.config

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)


class _PipeView:
    """What ``Img2ImgSampler`` needs from a pipeline, with the UNet swapped for ``_UNetCall``."""

    def __init__(self, pipe, unet) -> None:
        self.unet, self.vae, self.scheduler, self.vae_scale_factor = unet, pipe.vae, pipe.scheduler, pipe.vae_scale_factor


# ----------------------------------------------------------------------------- small pieces


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


def checkpoint_step(path: Path) -> int | None:
    name = path.name
    if not name.startswith(CHECKPOINT_PREFIX):
        return None
    try:
        return int(name[len(CHECKPOINT_PREFIX):])
    except ValueError:
        return None


def list_checkpoints(output_dir: Path, complete_only: bool = True) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None
             and (not complete_only or (p / STATE_FILE).is_file())]
    return sorted(found, key=checkpoint_step)


def find_checkpoint(output_dir: Path, spec: str) -> Path:
    """``latest`` (newest complete checkpoint-N), a folder name inside output_dir, or a path."""
    if spec == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise TrainingError(f"resume_from_checkpoint=latest: no complete {CHECKPOINT_PREFIX}N folder in "
                                f"{output_dir}; start without resume_from_checkpoint")
        return found[-1]
    path = Path(spec).expanduser()
    candidates = [path] if path.is_absolute() else [output_dir / path, path]
    for candidate in candidates:
        if candidate.is_dir():
            if not (candidate / STATE_FILE).is_file():
                raise TrainingError(f"{candidate} is not a complete training checkpoint ({STATE_FILE} is missing)")
            return candidate
    available = ", ".join(p.name for p in list_checkpoints(output_dir)) or "none"
    raise TrainingError(f"checkpoint {spec!r} not found (looked in {', '.join(str(c) for c in candidates)}); "
                        f"checkpoints in {output_dir}: {available}")


def _tensorboard_available() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


def _item_seeds(rng: random.Random, count: int) -> list[int]:
    return [rng.getrandbits(63) for _ in range(count)]


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    def __init__(self, cfg: Config) -> None:
        require(cfg)
        if not any(getattr(cfg, key) > 0 for key in LOSS_WEIGHTS.values()):
            raise ConfigError("every loss weight is 0: nothing to train")
        if cfg.train_batch_size < 2:
            raise ConfigError("train_batch_size must be at least 2: the projectors' BatchNorm layers train on "
                              "batch statistics")
        if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("mixed_precision=fp16 needs a CUDA GPU; on this machine use --set mixed_precision=no "
                              "(or bf16)")
        self.cfg = cfg
        self.output_dir = cfg.path("output_dir")
        self.resume_from = None
        if cfg.resume_from_checkpoint:
            self.resume_from = find_checkpoint(self.output_dir, cfg.resume_from_checkpoint)
        self.samples = read_manifest(cfg.path("train_data_list"), cfg.max_load_num)

    # ---------------------------------------------------------------- set-up

    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration

        cfg = self.cfg
        wants_tensorboard = cfg.report_to == "tensorboard"
        log_with = "tensorboard" if wants_tensorboard and _tensorboard_available() else None
        project = ProjectConfiguration(project_dir=str(self.output_dir),
                                       logging_dir=str(self.output_dir / cfg.logging_dir))
        accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                                  mixed_precision=cfg.mixed_precision, log_with=log_with, project_config=project,
                                  dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
                                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
        if wants_tensorboard and log_with is None and accelerator.is_main_process:
            logger.warning("tensorboard is not installed: losses go to the progress bar and %s only "
                           "(pip install tensorboard to get curves)", self.output_dir / LOG_FILE)
        return accelerator

    def _loss_models(self, device):
        cfg, root = self.cfg, self.cfg.path("models_dir")
        lpips = age = None
        if cfg.lpips_loss_weight > 0:
            from .lpips import ALEXNET_FILE, LPIPS_FILE, load_lpips

            lpips_path = cfg.path("lpips_model_path") or root / "lpips" / LPIPS_FILE
            alexnet = cfg.path("lpips_alexnet_path") or root / "lpips" / ALEXNET_FILE
            lpips = load_lpips(lpips_path, alexnet).to(device)
        if cfg.age_loss_weight > 0 or cfg.age_loss_2_weight > 0:
            from .age_model import DEFAULT_FILE, load_age_regressor

            spec = cfg.age_model_path or str(root / DEFAULT_FILE)
            age = load_age_regressor(spec, cfg.age_model_input_size, cfg.age_model_mean, cfg.age_model_std)
            age.to(device)
        return lpips, age

    # ---------------------------------------------------------------- run

    def run(self) -> TrainResult:
        from accelerate.utils import set_seed
        from diffusers.optimization import get_scheduler

        from .models import (CLIP_PROJECTOR_FILE, FACE_PROJECTOR_FILE, hparams, load_parts, load_released,
                             lora_parameters, save_released)

        cfg = self.cfg
        self.output_dir.mkdir(parents=True, exist_ok=True)
        accelerator = self._accelerator()
        self.accelerator = accelerator
        device = accelerator.device
        set_seed(cfg.seed)
        if cfg.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True

        dataset = FaceDataset(self.samples, cfg.resolution, cfg.random_flip)
        batches = len(dataset) // (cfg.train_batch_size * accelerator.num_processes)
        if batches == 0:
            raise DatasetError(f"the dataset has {len(dataset)} images, fewer than one batch of {cfg.train_batch_size} "
                               f"on each of {accelerator.num_processes} process(es); add images or lower "
                               f"train_batch_size")
        steps_per_epoch = math.ceil(batches / cfg.gradient_accumulation_steps)
        max_steps = cfg.max_train_steps or cfg.num_train_epochs * steps_per_epoch
        epochs = math.ceil(max_steps / steps_per_epoch)

        lpips, age_model = self._loss_models(device)
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
        parts = load_parts(cfg, weight_dtype, device)
        unet = parts.unet
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        if cfg.vae_gradient_checkpointing:
            parts.pipe.vae.enable_gradient_checkpointing()
        model = Cradle2Cane(parts.pipe, parts.arcface, parts.face_projector, parts.clip, parts.clip_projector,
                            parts.settings)

        lr = cfg.learning_rate
        if cfg.scale_lr:
            lr *= cfg.gradient_accumulation_steps * cfg.train_batch_size * accelerator.num_processes
        params = lora_parameters(unet) + list(parts.face_projector.parameters()) + \
            list(parts.clip_projector.parameters())
        optimizer = torch.optim.AdamW(params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
        try:
            scheduler = get_scheduler(cfg.lr_scheduler, optimizer,
                                      num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
                                      num_training_steps=max_steps * accelerator.num_processes)
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"lr_scheduler {cfg.lr_scheduler!r}: {exc}") from exc
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train_batch_size, shuffle=True, drop_last=True,
                                             num_workers=cfg.dataloader_num_workers, collate_fn=collate,
                                             pin_memory=device.type == "cuda")
        unet_p, face_p, clip_p, optimizer, loader, scheduler = accelerator.prepare(
            unet, parts.face_projector, parts.clip_projector, optimizer, loader, scheduler)
        discriminator = d_optimizer = None
        use_gan = cfg.use_gan_loss and (cfg.g_loss_weight > 0 or cfg.d_loss_weight > 0)
        if use_gan:
            discriminator = L.PatchDiscriminator(3, cfg.d_base_channels).to(device)
            d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=cfg.d_learning_rate,
                                           betas=(cfg.d_adam_beta1, cfg.d_adam_beta2))
            discriminator, d_optimizer = accelerator.prepare(discriminator, d_optimizer)
        self._register_hooks(accelerator, parts, cfg)

        # The conditioning facade uses the prepared projectors (gradients synchronised across GPUs);
        # ``model`` (raw modules) renders the validation images on the main process.
        train_model = Cradle2Cane(parts.pipe, parts.arcface, face_p, parts.clip, clip_p, parts.settings)
        train_sampler = Img2ImgSampler(_PipeView(parts.pipe, _UNetCall(unet_p, unet)), steps=cfg.infer_step)
        identity = getattr(Cradle2Cane.identity_embeddings, "__wrapped__", Cradle2Cane.identity_embeddings)

        global_step = 0
        if self.resume_from is not None:
            accelerator.load_state(str(self.resume_from))
            load_released(self.resume_from, unet, parts.face_projector, parts.clip_projector)
            state = json.loads((self.resume_from / STATE_FILE).read_text(encoding="utf-8"))
            global_step = int(state["global_step"])
            logger.info("resumed from %s at step %d", self.resume_from, global_step)
        if global_step >= max_steps:
            raise TrainingError(f"the checkpoint is at step {global_step}, max_train_steps is {max_steps}: nothing "
                                f"to do; raise max_train_steps (or num_train_epochs) to train further")

        validation = None
        if accelerator.is_main_process:
            (self.output_dir / CONFIG_FILE).write_text(dump(cfg.to_dict()), encoding="utf-8")
            if cfg.validation_steps > 0:
                from .validation import build_validation_set

                validation = build_validation_set(cfg.validation_image, cfg.num_validation_images, self.samples,
                                                  cfg.validation_target_age, cfg.resolution)
        if accelerator.log_with:
            scalars = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
            accelerator.init_trackers("cradle2cane", config=scalars)

        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, initial=global_step, desc="training", unit="step",
                   disable=not accelerator.is_local_main_process)
        result = TrainResult(self.output_dir, global_step, is_main_process=accelerator.is_main_process)
        first_epoch = global_step // steps_per_epoch
        skip_batches = (global_step % steps_per_epoch) * cfg.gradient_accumulation_steps
        micro_step = global_step * cfg.gradient_accumulation_steps
        running: dict[str, list[float]] = {}
        last_validated = -1
        started = time.time()
        done = False
        for epoch in range(first_epoch, epochs):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            active = loader
            if epoch == first_epoch and skip_batches:
                active = accelerator.skip_first_batches(loader, skip_batches)
            for batch in active:
                face_p.train()
                clip_p.train()
                with accelerator.accumulate(unet_p, face_p, clip_p):
                    terms, info, faces, output = self._generator_step(
                        batch, micro_step, model, train_model, train_sampler, identity, lpips, age_model,
                        accelerator.unwrap_model(discriminator) if discriminator is not None else None)
                    total = sum(terms.values())
                    if not L.is_finite(total):
                        raise TrainingError(f"the loss became {total.item()} at step {global_step + 1} "
                                            f"({', '.join(f'{k}={v.item():.4g}' for k, v in terms.items())}); "
                                            f"lower learning_rate or use bf16/fp32")
                    accelerator.backward(total)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                micro_step += 1
                for key, value in {**{k: v.detach() for k, v in terms.items()}, "loss": total.detach()}.items():
                    running.setdefault(key, []).append(float(value))
                if not accelerator.sync_gradients:
                    continue

                d_loss = None
                if use_gan and cfg.d_loss_weight > 0 and global_step % cfg.d_loss_update_step == 0:
                    d_loss = cfg.d_loss_weight * L.discriminator_hinge_loss(discriminator, faces, output.detach())
                    # accelerator.backward divides by the accumulation steps; the D update is once per step.
                    accelerator.backward(d_loss * cfg.gradient_accumulation_steps)
                    d_optimizer.step()
                    d_optimizer.zero_grad(set_to_none=True)
                del output, faces
                global_step += 1
                logs = {k: sum(v) / len(v) for k, v in running.items()}
                running.clear()
                reduced = accelerator.reduce(torch.tensor(list(logs.values()), device=device), "mean")
                logs = dict(zip(logs.keys(), reduced.tolist()))
                if d_loss is not None:
                    logs["d_loss"] = float(accelerator.reduce(d_loss.detach(), "mean"))
                logs["lr"] = scheduler.get_last_lr()[0]
                result.losses = logs
                result.global_step = global_step
                if accelerator.is_main_process:
                    self._log(accelerator, global_step, epoch, logs, info)
                bar.update(1)
                bar.set_postfix({k.replace("_loss", ""): f"{v:.3g}" for k, v in logs.items() if k != "lr"})

                if global_step % cfg.checkpointing_steps == 0:
                    result.checkpoints.append(self._save_checkpoint(accelerator, global_step, epoch, micro_step))
                if validation is not None and global_step % cfg.validation_steps == 0:
                    result.validation_images.append(self._validate(accelerator, model, validation, global_step))
                    last_validated = global_step
                if global_step >= max_steps:
                    done = True
                    break
            if done:
                break
        bar.close()

        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_released(self.output_dir, unet, parts.face_projector, parts.clip_projector, parts.lora_config,
                          hparams(cfg, parts.settings))
            if validation is not None and last_validated != global_step:
                result.validation_images.append(self._validate(accelerator, model, validation, global_step))
            logger.info("trained %d steps in %.0f s; weights in %s (%s, %s, %s)", global_step, time.time() - started,
                        self.output_dir, "pytorch_lora_weights.safetensors", FACE_PROJECTOR_FILE, CLIP_PROJECTOR_FILE)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return result

    # ---------------------------------------------------------------- one batch

    def _generator_step(self, batch, micro_step, model, train_model, train_sampler, identity, lpips, age_model,
                        discriminator):
        cfg, accelerator = self.cfg, self.accelerator
        device = accelerator.device
        faces = batch["image"].to(device, torch.float32)
        sources = [int(a) for a in batch["age"].tolist()]
        genders = list(batch["gender"])
        count = len(sources)
        rng = random.Random(f"cradle2cane/{cfg.seed}/{accelerator.process_index}/{micro_step}")
        shift = sample_shift(rng, cfg)
        targets, strength = batch_plan(sources, shift, cfg)
        pass1 = [torch.Generator("cpu").manual_seed(s) for s in _item_seeds(rng, count)]
        pass2 = [torch.Generator("cpu").manual_seed(s) for s in _item_seeds(rng, count)]
        items = list(range(count))
        unet = model.pipe.unet
        with accelerator.autocast():
            with torch.no_grad():
                embeds, pooled = model._encode_prompts([aging_prompt(t, g) for t, g in zip(targets, genders)])
                encoded = model.sampler.encode(faces)
                with lora_enabled(unet, False):
                    latents = model.sampler.run(encoded, items, strength, embeds, pooled, pass1)
                aged = model.sampler.decode(latents)
            first = FirstPassOutput(aged=aged, pooled_embeds=pooled, source_index=items, source_ages=sources,
                                    target_ages=targets, genders=genders, strengths=[strength] * count,
                                    seeds=[0] * count)
            conditioning = identity(train_model, faces, first)
            with torch.no_grad():
                encoded_aged = train_sampler.encode(aged)
            with lora_enabled(unet, True):
                latents = train_sampler.run(encoded_aged, items, cfg.id_strength, conditioning, pooled, pass2)
            output = train_sampler.decode(latents)
        terms = self._losses(faces, aged, output, targets, lpips, age_model, discriminator, model.arcface)
        info = {"shift": shift, "strength": strength}
        return terms, info, faces, output

    def _losses(self, faces, aged, output, targets, lpips, age_model, discriminator, arcface) -> dict[str, torch.Tensor]:
        cfg = self.cfg
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
                        raise TrainingError(f"the age regressor {cfg.age_model_path or 'age_regressor.pt2'} returns no "
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

    # ---------------------------------------------------------------- checkpoints, logs, validation

    def _register_hooks(self, accelerator, parts, cfg) -> None:
        from .models import hparams, save_released

        ours = (parts.unet, parts.face_projector, parts.clip_projector)

        def is_ours(model) -> bool:
            return any(accelerator.unwrap_model(model) is m for m in ours)

        def save_hook(models, weights, output_dir):
            # LoRA and projectors go out in the released layout (loadable by the core as they are);
            # accelerate keeps only what remains (the discriminator) plus optimisers and RNG states.
            if accelerator.is_main_process:
                save_released(output_dir, parts.unet, parts.face_projector, parts.clip_projector, parts.lora_config,
                              hparams(cfg, parts.settings))
            for i in reversed(range(len(models))):
                if is_ours(models[i]) and i < len(weights):
                    weights.pop(i)

        def load_hook(models, input_dir):
            for i in reversed(range(len(models))):
                if is_ours(models[i]):
                    models.pop(i)

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

    def _save_checkpoint(self, accelerator, step: int, epoch: int, micro_step: int) -> Path:
        cfg = self.cfg
        path = self.output_dir / f"{CHECKPOINT_PREFIX}{step}"
        if accelerator.is_main_process:
            if path.exists():
                shutil.rmtree(path)
            if cfg.checkpoints_total_limit is not None:
                existing = list_checkpoints(self.output_dir, complete_only=False)
                for old in existing[:max(0, len(existing) - cfg.checkpoints_total_limit + 1)]:
                    logger.info("removing old checkpoint %s (checkpoints_total_limit=%d)", old,
                                cfg.checkpoints_total_limit)
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(path))
        if accelerator.is_main_process:
            state = {"global_step": step, "epoch": epoch, "micro_step": micro_step}
            (path / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")  # written last: complete
            logger.info("checkpoint saved to %s", path)
        accelerator.wait_for_everyone()
        return path

    def _log(self, accelerator, step: int, epoch: int, logs: dict[str, float], info: dict[str, Any]) -> None:
        record = {"step": step, "epoch": epoch, **logs, **info}
        with (self.output_dir / LOG_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if accelerator.log_with:
            accelerator.log(logs, step=step)

    def _validate(self, accelerator, model, validation, step: int) -> Path:
        from .validation import save_grid

        projectors = (model.face_projector, model.clip_projector)
        for m in projectors:
            m.eval()
        try:
            with accelerator.autocast():
                path, grid = save_grid(model, validation, self.output_dir / VALIDATION_DIR / f"step-{step:06d}.png",
                                       seed=self.cfg.seed)
        finally:
            for m in projectors:
                m.train()
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("validation", grid, step, dataformats="HWC")
        return path


def train(cfg: Config) -> TrainResult:
    """Run a training described by ``cfg`` (see ``defaults.yaml``)."""
    return Trainer(cfg).run()
