"""The ``Cradle2Cane`` facade: load the released files once, age many faces.

A call is validated and planned once (``plan``, an ``AgingPlan``: item ``b * J + j`` is face ``b``
at target age ``j``), then runs pass 1 (AdaNI), the identity conditioning and pass 2 on that plan.
Each item draws its noise from its own generators seeded from its face's seed, so one face aged to
70 alone equals the 70 of a sweep. One instance may be shared by threads: runs take turns.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .loading import paths as W
from .loading.components import check_files, load_arcface, load_base, load_clip, load_lora, load_projector
from .loading.settings import Settings, range_problem
from .method.adani import adani_strength, check_strength
from .method.arcface import IResNet
from .method.clip_features import ClipFeatures, ClipPreprocess
from .method.conditioning import IdentityEncoder
from .method.lora import lora_enabled, lora_fused
from .method.plan import AgingPlan, check_batch_size, check_faces, make_plan, per_face, second_pass_seed
from .method.projectors import ProjectorMLP
from .method.prompts import aging_prompt, encode_prompts
from .method.reference import quantise_8bit
from .method.seeds import check_seed
from .method.sampler import EncodedImages, Img2ImgSampler, Progress, StepCallback
from .runtime.batching import vae_batch_size
from .runtime.precision import resolve_dtype

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8


class NonFiniteResultError(RuntimeError):
    """A pass produced NaN or infinite values (the image would come out black or garbage)."""


@dataclass
class FirstPassOutput:
    """What pass 1 hands to the identity embedding and pass 2 (one entry per item of ``plan``)."""

    aged: torch.Tensor  # [N,3,H,W] 0..1, float32, CPU
    pooled_embeds: torch.Tensor  # [N,P] pooled text embedding of the aging prompt
    plan: AgingPlan

    def __len__(self) -> int:
        return len(self.plan)

    source_index = property(lambda self: self.plan.source_index)
    source_ages = property(lambda self: self.plan.source_ages)
    target_ages = property(lambda self: self.plan.target_ages)
    genders = property(lambda self: self.plan.genders)
    strengths = property(lambda self: self.plan.strengths)
    seeds = property(lambda self: self.plan.seeds)


@dataclass
class AgingResult:
    """Final images, the pass-1 images, and what was used for each item."""

    images: torch.Tensor  # [N,3,H,W] 0..1, float32, CPU
    aged: torch.Tensor
    source_index: list[int]
    source_ages: list[int]
    target_ages: list[int]
    genders: list[str]
    strengths: list[float]
    id_strength: float
    seeds: list[int] = field(default_factory=list)


def check_finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """Raise ``NonFiniteResultError`` naming ``what`` and the items when ``values`` hold NaN/Inf."""
    bad = ~torch.isfinite(values.flatten(1)).all(dim=1)
    if bool(bad.any()):
        items = bad.nonzero().flatten().tolist()
        raise NonFiniteResultError(
            f"{what} produced NaN or infinite values for {len(items)} of {len(values)} items (items {items[:8]}), "
            f"so no image is returned. The weights or settings give non-finite numbers: check the LoRA and "
            f"projector files for NaN/Inf, swr_alpha/swr_beta in hparams.yml, or run in float32 (float16 can "
            f"overflow).")
    return values


class Cradle2Cane:
    """Two-pass lifespan face aging (AdaNI first pass, SVR-ArcFace/Rotate-CLIP second pass)."""

    def __init__(self, pipe, arcface: IResNet, face_projector: ProjectorMLP, clip: ClipFeatures,
                 clip_projector: ProjectorMLP, settings: Settings) -> None:
        self.pipe = pipe
        self.arcface = arcface.eval()
        self.face_projector = face_projector.eval()
        self.clip = clip
        self.clip_projector = clip_projector.eval()
        self.settings = settings
        self.offload = None  # a runtime.offload.ModelOffload while model CPU offload is on
        # Runs switch the shared UNet's LoRA and move weights: one run at a time per instance.
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, models_dir: str | Path, *, base: str | Path | None = None,
                        cradle2cane_dir: str | Path | None = None, base_config: str | Path | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                        memory: str = "default") -> "Cradle2Cane":
        """Load every component from a models folder laid out as in ``loading.paths``' docstring.

        ``dtype`` defaults to float16 on CUDA and float32 elsewhere. The VAE runs in float16 only
        when it is the fp16-fix VAE (``force_upcast`` false); otherwise it stays in float32.
        ``memory``: ``default`` (all on ``device``), ``offload`` or ``low-vram`` (see
        ``runtime.offload``); the offload modes never hold every component on the device at once.
        """
        from .runtime.offload import MEMORY_MODES, set_memory_mode

        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {', '.join(MEMORY_MODES)}, got {memory!r}")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = resolve_dtype(dtype, device)
        paths = W.ModelPaths.resolve(models_dir, base=base, cradle2cane_dir=cradle2cane_dir, base_config=base_config)
        check_files(paths)
        settings = Settings.from_file(paths.hparams) if paths.hparams else Settings()
        if paths.hparams is None:
            logger.warning("no %s beside the LoRA in %s; using the released defaults", W.HPARAMS_FILE,
                           paths.lora.parent)
        clip_model, tokenizer = load_clip(paths.clip, dtype)
        pipe = load_base(paths, tokenizer, dtype)
        load_lora(pipe, paths.lora)
        arcface = load_arcface(paths.arcface, settings.arcface_network)
        unet_width = int(pipe.unet.config.cross_attention_dim)
        face_projector = load_projector(paths.face_projector, arcface.hidden_dim, unet_width, "face projector")
        clip_width = int(clip_model.config.projection_dim)
        clip_projector = load_projector(paths.clip_projector, clip_width, unet_width, "CLIP projector")
        clip = ClipFeatures(clip_model, tokenizer, ClipPreprocess.from_folder(paths.clip))
        model = cls(pipe, arcface.to(dtype), face_projector.to(dtype), clip, clip_projector.to(dtype), settings)
        if memory != "default":
            return set_memory_mode(model, memory, device)
        return model.to(device)

    def to(self, device: str | torch.device) -> "Cradle2Cane":
        """Move every component to ``device`` (this ends model CPU offload)."""
        device = torch.device(device)
        with self._lock:
            if self.offload is not None:
                self.offload.remove()
                self.offload = None
            for module in self.components().values():
                module.to(device)
        return self

    # ------------------------------------------------------------------ memory

    def enable_model_cpu_offload(self, device: str | torch.device | None = None,
                                 low_vram: bool = False) -> "Cradle2Cane":
        """Keep the components on the CPU and move each group to ``device`` (default: CUDA when
        available) only while it runs; ``low_vram`` adds VAE slicing and tiling. See ``runtime.offload``."""
        from .runtime.offload import enable_model_cpu_offload

        with self._lock:
            return enable_model_cpu_offload(self, device, low_vram=low_vram)

    def disable_model_cpu_offload(self, device: str | torch.device | None = None) -> "Cradle2Cane":
        from .runtime.offload import disable_model_cpu_offload

        with self._lock:
            return disable_model_cpu_offload(self, device)

    def release_memory(self) -> None:
        """Return cached GPU blocks, drop the CLIP text cache and park offloaded weights on the CPU."""
        from .runtime.offload import release_memory

        with self._lock:
            self.clip.clear_cache()
            release_memory(self)

    def components(self) -> dict[str, torch.nn.Module]:
        """Every torch module by a stable name."""
        pipe = self.pipe
        return {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder,
                "text_encoder_2": pipe.text_encoder_2, "clip": self.clip.model, "arcface": self.arcface,
                "face_projector": self.face_projector, "clip_projector": self.clip_projector}

    def component_groups(self) -> dict[str, list[torch.nn.Module]]:
        """The modules that run together, by group: what offloading moves as one."""
        pipe = self.pipe
        return {"text_encoders": [pipe.text_encoder, pipe.text_encoder_2], "unet": [pipe.unet], "vae": [pipe.vae],
                "identity": [self.arcface, self.face_projector, self.clip.model, self.clip_projector]}

    @property
    def device(self) -> torch.device:
        """Where the computation runs (the execution device while offloading). Reads one
        parameter: diffusers' ``unet.device`` walks every module."""
        return self.offload.device if self.offload is not None else next(self.pipe.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.pipe.unet.parameters()).dtype

    @property
    def resolution(self) -> int:
        return self.settings.resolution

    @property
    def identity(self) -> IdentityEncoder:
        """The pass-2 conditioning over this model's ArcFace, CLIP and projectors."""
        return IdentityEncoder(self.arcface, self.face_projector, self.clip, self.clip_projector, self.settings,
                               feature_dtype=self.dtype)

    @property
    def sampler(self) -> Img2ImgSampler:
        """The img2img sampler over this model's components, placed where the model runs now."""
        pipe = self.pipe
        return Img2ImgSampler(pipe.unet, pipe.vae, pipe.scheduler.config, pipe.vae_scale_factor,
                              steps=self.settings.infer_step, device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ inputs and plans

    def prepare_faces(self, images: torch.Tensor) -> torch.Tensor:
        """Check a [B,3,H,W] 0..1 batch; centre-crop non-square and resize to the model's size
        (with a warning: the model expects FFHQ-aligned faces at its training resolution)."""
        return check_faces(images, self.resolution)

    def strength_for(self, source_age: int, target_age: int) -> float:
        s = self.settings
        return adani_strength(abs(target_age - source_age), s.t1, s.t2, s.one_threshold)

    def plan(self, faces: int | torch.Tensor, target_ages: int | Sequence[int], source_ages: int | Sequence[int],
             genders: str | Sequence[str], seed: int | Sequence[int] = 0, strength: float | None = None,
             id_strength: float | None = None, reference_inference: bool = False) -> AgingPlan:
        """Validate a request for ``faces`` (a count or the batch) under this model's settings."""
        count = faces.shape[0] if isinstance(faces, torch.Tensor) else faces
        return make_plan(count, target_ages, source_ages, genders, self.settings, seed=seed, strength=strength,
                         id_strength=id_strength, reference_inference=reference_inference)

    # ------------------------------------------------------------------ the passes (public, each on its own)

    def first_pass(self, faces: torch.Tensor, target_ages: int | Sequence[int], source_ages: int | Sequence[int],
                   genders: str | Sequence[str], seed: int | Sequence[int] = 0, strength: float | None = None,
                   callback: StepCallback | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                   reference_inference: bool = False) -> FirstPassOutput:
        """AdaNI: img2img with the LoRA off, prompted with the target age and gender."""
        faces = self.prepare_faces(faces)
        plan = self.plan(faces, target_ages, source_ages, genders, seed, strength,
                         reference_inference=reference_inference)
        batch_size = check_batch_size(batch_size)
        with self._lock, torch.no_grad():
            sampler = self.sampler
            progress = Progress(sampler.unet_calls(plan.strengths, batch_size), callback)
            aged, pooled = self._first_pass(sampler, faces, plan, batch_size, progress)
        return FirstPassOutput(aged=aged.float().cpu(), pooled_embeds=pooled.cpu(), plan=plan)

    def identity_embeddings(self, faces: torch.Tensor, first: FirstPassOutput, aged: torch.Tensor | None = None,
                            use_swr: bool | None = None, clip_method: str | None = None,
                            swr_alpha: float | None = None, swr_beta: float | None = None) -> torch.Tensor:
        """Pass-2 conditioning [N, 2, D]: the SVR-ArcFace token and the Rotate-CLIP token (inference;
        training uses ``IdentityEncoder`` with gradients)."""
        problem = range_problem({"swr_alpha": swr_alpha, "swr_beta": swr_beta})  # None = hparams.yml's
        if problem:
            raise ValueError(f"identity embeddings: {problem}")
        faces = self.prepare_faces(faces)
        aged = self._aged_input(first, aged)
        if faces.shape[0] < first.plan.faces:
            raise ValueError(f"pass 1 was run on {first.plan.faces} faces, got {faces.shape[0]} source faces")
        with self._lock, torch.no_grad():
            return self._condition(faces, aged, first.plan, use_swr=use_swr, clip_method=clip_method,
                                   swr_alpha=swr_alpha, swr_beta=swr_beta)

    def second_pass(self, first: FirstPassOutput, conditioning: torch.Tensor, aged: torch.Tensor | None = None,
                    seed: int | Sequence[int] | None = None, id_strength: float | None = None,
                    callback: StepCallback | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
        """Identity pass: img2img on the aged images with the LoRA on, conditioned on identity.
        ``seed`` (one, or one per item) defaults to pass 1's; pass 2 draws fresh noise from it."""
        id_strength = check_strength(self.settings.id_strength if id_strength is None else id_strength,
                                     self.settings.infer_step, "id_strength")
        aged = self._aged_input(first, aged)
        count = len(first)
        if conditioning.shape[0] != count:
            raise ValueError(f"second pass: {conditioning.shape[0]} identity embeddings for {count} pass-1 items; "
                             f"they must match")
        seeds = first.seeds if seed is None else [check_seed(s, "seed") for s in per_face(seed, count, "seeds")]
        batch_size = check_batch_size(batch_size)
        with self._lock, torch.no_grad():
            sampler = self.sampler
            progress = Progress(sampler.unet_calls([id_strength] * count, batch_size), callback)
            images = self._second_pass(sampler, aged, conditioning, first.pooled_embeds, seeds, id_strength,
                                       batch_size, progress, first.plan.reference_inference)
        return images.float().cpu()

    # ------------------------------------------------------------------ all together

    def __call__(self, faces: torch.Tensor, target_ages: int | Sequence[int], source_ages: int | Sequence[int],
                 genders: str | Sequence[str], seed: int | Sequence[int] = 0, strength: float | None = None,
                 id_strength: float | None = None, callback: StepCallback | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, reference_inference: bool = False) -> AgingResult:
        """Age aligned faces [B,3,H,W] (0..1) to each target age; ``seed`` fixes both passes.
        ``reference_inference`` reproduces the reference inference script (see ``method.reference``)."""
        faces = self.prepare_faces(faces)
        plan = self.plan(faces, target_ages, source_ages, genders, seed, strength, id_strength, reference_inference)
        return self._run(faces, plan, callback, batch_size)

    def run(self, faces: torch.Tensor, plan: AgingPlan, callback: StepCallback | None = None,
            batch_size: int = DEFAULT_BATCH_SIZE) -> AgingResult:
        """Both passes for a plan made by ``plan`` (the faces are checked as by ``__call__``)."""
        return self._run(self.prepare_faces(faces), plan, callback, batch_size)

    def _run(self, faces: torch.Tensor, plan: AgingPlan, callback: StepCallback | None,
             batch_size: int) -> AgingResult:
        if faces.shape[0] != plan.faces:
            raise ValueError(f"the plan is for {plan.faces} faces, got {faces.shape[0]}")
        batch_size = check_batch_size(batch_size)
        count = len(plan)
        with self._lock, torch.no_grad():
            sampler = self.sampler
            total = sampler.unet_calls(plan.strengths, batch_size) + \
                sampler.unet_calls([plan.id_strength] * count, batch_size)
            progress = Progress(total, callback)
            faces = faces.to(sampler.device)
            aged, pooled = self._first_pass(sampler, faces, plan, batch_size, progress)
            conditioning = self._condition(faces, aged, plan)
            images = self._second_pass(sampler, aged, conditioning, pooled, plan.seeds, plan.id_strength,
                                       batch_size, progress, plan.reference_inference)
        return AgingResult(images=images.float().cpu(), aged=aged.float().cpu(), source_index=list(plan.source_index),
                           source_ages=list(plan.source_ages), target_ages=list(plan.target_ages),
                           genders=list(plan.genders), strengths=list(plan.strengths), id_strength=plan.id_strength,
                           seeds=list(plan.seeds))

    # ------------------------------------------------------------------ the work (under the lock, no grad)

    def _first_pass(self, sampler: Img2ImgSampler, faces: torch.Tensor, plan: AgingPlan, batch_size: int,
                    progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
        """Aged images (on the device, VAE dtype; 8-bit values with ``reference_inference``) and the
        pooled prompt embeddings pass 2 reuses."""
        encoded = self._encode(sampler, faces, batch_size)
        prompts = [aging_prompt(t, g) for t, g in zip(plan.target_ages, plan.genders)]
        embeds, pooled = encode_prompts(self.pipe, prompts, sampler.device)
        generators = [torch.Generator("cpu").manual_seed(s) for s in plan.seeds]
        with lora_enabled(self.pipe.unet, False):
            latents = sampler.run(encoded, plan.source_index, plan.strengths, embeds, pooled, generators, progress,
                                  batch_size)
        aged = self._decode(sampler, latents, batch_size, "pass 1 (AdaNI)")
        return (quantise_8bit(aged) if plan.reference_inference else aged), pooled

    def _condition(self, faces: torch.Tensor, aged: torch.Tensor, plan: AgingPlan, **overrides) -> torch.Tensor:
        conditioning = self.identity(faces, aged, plan.source_index, plan.source_ages, plan.target_ages,
                                     reference_inference=plan.reference_inference, **overrides)
        return check_finite(conditioning, "the identity embedding (SVR-ArcFace/Rotate-CLIP)")

    def _second_pass(self, sampler: Img2ImgSampler, aged: torch.Tensor, conditioning: torch.Tensor,
                     pooled: torch.Tensor, seeds: Sequence[int], id_strength: float, batch_size: int,
                     progress: Progress, reference_inference: bool) -> torch.Tensor:
        encoded = self._encode(sampler, aged, batch_size)
        generators = [torch.Generator("cpu").manual_seed(second_pass_seed(s)) for s in seeds]
        with self._identity_lora():
            latents = sampler.run(encoded, range(len(seeds)), id_strength, conditioning, pooled, generators,
                                  progress, batch_size)
        images = self._decode(sampler, latents, batch_size, "pass 2 (identity)")
        return quantise_8bit(images) if reference_inference else images

    def _identity_lora(self):
        """Pass 2's LoRA, folded into the weights (one matmul per projection), except when the model
        saves memory over speed (VAE slicing: the low-vram mode): folding holds a copy of the
        attention weights (1.8 GiB in fp16 at full size) while the pass runs."""
        unet = self.pipe.unet
        if getattr(self.pipe.vae, "use_slicing", False):
            return lora_enabled(unet, True)
        if self.offload is not None:
            self.offload.load("unet")  # fold where the weights will run
        return lora_fused(unet)

    def _aged_input(self, first: FirstPassOutput, aged: torch.Tensor | None) -> torch.Tensor:
        """Pass 1's aged images, or a caller's replacement (checked; 8-bit under reference inference)."""
        if aged is None:
            return first.aged
        aged = self.prepare_faces(aged)
        if aged.shape[0] != len(first):
            raise ValueError(f"aged images: got {aged.shape[0]} for {len(first)} pass-1 items")
        return quantise_8bit(aged) if first.plan.reference_inference else aged

    @staticmethod
    def _encode(sampler: Img2ImgSampler, images: torch.Tensor, batch_size: int) -> EncodedImages:
        """VAE posteriors in chunks of at most ``batch_size`` (fewer on the CPU: ``runtime.batching``)."""
        rows = vae_batch_size(sampler.vae, sampler.device, batch_size, *images.shape[-2:])
        return EncodedImages.cat([sampler.encode(images[i:i + rows]) for i in range(0, images.shape[0], rows)])

    @staticmethod
    def _decode(sampler: Img2ImgSampler, latents: torch.Tensor, batch_size: int, what: str) -> torch.Tensor:
        check_finite(latents, what)
        rows = vae_batch_size(sampler.vae, sampler.device, batch_size,
                              *(side * sampler.vae_scale_factor for side in latents.shape[-2:]))
        images = torch.cat([sampler.decode(latents[i:i + rows]) for i in range(0, latents.shape[0], rows)])
        return check_finite(images, f"{what}, VAE decode")
