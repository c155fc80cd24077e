"""The training loop on accelerate (one or many GPUs, fp16/bf16): optimisers, checkpoints, logs,
validation. What one batch computes is in ``batch``. Both passes, the prompts, the conditioning
and the validation images come from the core (``Img2ImgSampler``, ``encode_prompts``,
``IdentityEncoder``, ``Cradle2Cane.__call__``), so training and inference cannot drift apart.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cradle2cane.method.conditioning import IdentityEncoder
from cradle2cane.files.atomic import write_text_atomic
from cradle2cane.method.sampler import Img2ImgSampler
from cradle2cane.pipeline import Cradle2Cane

from . import losses as L
from .batch import LOSS_WEIGHTS, generator_step
from .checkpoints import find_checkpoint, register_hooks, save_checkpoint
from .config import Config, ConfigError, dump, require
from .data import DatasetError, FaceDataset, collate, read_manifest
from .outputs import CONFIG_FILE, LOG_FILE, VALIDATION_DIR, preflight, read_trainer_state, restore

logger = logging.getLogger(__name__)



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


# ----------------------------------------------------------------------------- small pieces


def _tensorboard_available() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


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
        preflight(cfg, self.samples, self.resume_from)  # output folder, checkpoint, images: before any model

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
        register_hooks(accelerator, parts, cfg)

        # Pass 2 and the conditioning run through the prepared (possibly DDP-wrapped) UNet and
        # projectors, so their gradients are synchronised across GPUs; pass 1 needs no gradient.
        # ``model`` (raw modules) renders the validation images on the main process.
        pipe = parts.pipe
        samplers = [Img2ImgSampler(net, pipe.vae, pipe.scheduler.config, pipe.vae_scale_factor, steps=cfg.infer_step,
                                   device=device, dtype=weight_dtype) for net in (unet, unet_p)]
        identity = IdentityEncoder(parts.arcface, face_p, parts.clip, clip_p, parts.settings,
                                   feature_dtype=weight_dtype)

        global_step = 0
        if self.resume_from is not None:
            restore(accelerator, self.resume_from)
            load_released(self.resume_from, unet, parts.face_projector, parts.clip_projector)
            global_step = read_trainer_state(self.resume_from)["global_step"]
            logger.info("resumed from %s at step %d", self.resume_from, global_step)
        if global_step >= max_steps:
            raise TrainingError(f"the checkpoint is at step {global_step}, max_train_steps is {max_steps}: nothing "
                                f"to do; raise max_train_steps (or num_train_epochs) to train further")

        validation = None
        if accelerator.is_main_process:
            write_text_atomic(self.output_dir / CONFIG_FILE, dump(cfg.to_dict()))
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
                    terms, info, faces, output = generator_step(
                        cfg, accelerator, batch, micro_step, parts, samplers, identity, lpips, age_model,
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
                    result.checkpoints.append(save_checkpoint(accelerator, cfg, self.output_dir, global_step, epoch,
                                                              micro_step))
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

    # ---------------------------------------------------------------- checkpoints, logs, validation

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
