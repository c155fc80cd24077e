"""The ``Cradle2Cane`` facade: load the released files once, age many faces.

Item layout: for B input faces and J target ages a call produces N = B * J items, item
``b * J + j`` being face ``b`` at target age ``j``. Each item draws its noise from its own generator
seeded with the face's seed, so one face aged to 70 alone equals the 70 of a sweep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .loading import paths as W
from .method.arcface import IResNet, arcface_hidden_state
from .method.clip_features import ClipFeatures, ClipPreprocess
from .method.prompts import age_text
from .method.identity import rotate_clip, svr_arcface
from .method.sampler import EncodedImages, Img2ImgSampler, StepCallback
from .method.adani import adani_strength, check_strength, unet_evaluations
from .method.prompts import aging_prompt, check_age, check_gender
from .method.lora import lora_enabled
from .loading.components import load_arcface, load_base, load_clip, load_lora, load_projector
from .method.projectors import ProjectorMLP
from .loading.settings import Settings
from .runtime.precision import resolve_dtype

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8


@dataclass
class FirstPassOutput:
    """What pass 1 hands to the identity embedding and pass 2 (one entry per item)."""

    aged: torch.Tensor  # [N,3,H,W] 0..1, float32, CPU
    pooled_embeds: torch.Tensor  # [N,P] pooled text embedding of the aging prompt
    source_index: list[int]
    source_ages: list[int]
    target_ages: list[int]
    genders: list[str]
    strengths: list[float]
    seeds: list[int]

    def __len__(self) -> int:
        return len(self.source_index)


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


def _per_face(value, count: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{what}: got {len(value)} values for {count} faces; give one, or one per face")
        return list(value)
    return [value] * count


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


class _Progress:
    def __init__(self, total: int, callback: StepCallback | None) -> None:
        self.total, self.done, self.callback = total, 0, callback

    def __call__(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


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
        self.sampler = Img2ImgSampler(pipe, steps=settings.infer_step)
        self.offload = None  # a memory.ModelOffload while model CPU offload is on

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, models_dir: str | Path, *, base: str | Path | None = None,
                        cradle2cane_dir: str | Path | None = None, base_config: str | Path | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | str | None = None,
                        memory: str = "default") -> "Cradle2Cane":
        """Load every component from a models folder laid out as in ``weights``' docstring.

        ``dtype`` defaults to float16 on CUDA and float32 elsewhere. The VAE runs in float16 only
        when it is the fp16-fix VAE (``force_upcast`` false); otherwise it stays in float32.
        ``memory``: ``default`` (all on ``device``), ``offload`` or ``low-vram`` (see ``memory``);
        the offload modes never hold every component on the device at once.
        """
        from .runtime.offload import MEMORY_MODES, set_memory_mode

        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {', '.join(MEMORY_MODES)}, got {memory!r}")
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = resolve_dtype(dtype, device)
        paths = W.ModelPaths.resolve(models_dir, base=base, cradle2cane_dir=cradle2cane_dir, base_config=base_config)
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
        available) only while it runs; ``low_vram`` adds VAE slicing and tiling. See ``memory``."""
        from .runtime.offload import enable_model_cpu_offload

        return enable_model_cpu_offload(self, device, low_vram=low_vram)

    def disable_model_cpu_offload(self, device: str | torch.device | None = None) -> "Cradle2Cane":
        from .runtime.offload import disable_model_cpu_offload

        return disable_model_cpu_offload(self, device)

    def release_memory(self) -> None:
        """Return cached GPU blocks, drop the CLIP text cache and park offloaded weights on the CPU."""
        from .runtime.offload import release_memory

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
        """Where the computation runs (the execution device while offloading)."""
        return self.offload.device if self.offload is not None else self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    @property
    def resolution(self) -> int:
        return self.settings.resolution

    # ------------------------------------------------------------------ inputs

    def prepare_faces(self, images: torch.Tensor) -> torch.Tensor:
        """Check a [B,3,H,W] 0..1 batch; centre-crop non-square and resize to the model's size
        (with a warning: the model expects FFHQ-aligned faces at its training resolution)."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"faces must be a [B,3,H,W] tensor of RGB images in 0..1, got {shape}")
        if images.shape[0] == 0:
            raise ValueError("faces: the batch is empty")
        images = images.float()
        if not torch.isfinite(images).all():
            raise ValueError("faces contain NaN or infinite values")
        if images.min() < -1e-3 or images.max() > 1 + 1e-3:
            raise ValueError(f"faces must be in 0..1, got values in {images.min():.3g}..{images.max():.3g}")
        _, _, h, w = images.shape
        if h != w:
            side = min(h, w)
            logger.warning("faces are %dx%d, not square: centre-cropping to %dx%d", w, h, side, side)
            top, left = (h - side) // 2, (w - side) // 2
            images = images[:, :, top:top + side, left:left + side]
        size = self.resolution
        if images.shape[-1] != size:
            logger.warning("faces are %dpx, the model works at %dpx: resizing", images.shape[-1], size)
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return images.clamp(0, 1)

    # ------------------------------------------------------------------ pass 1

    def strength_for(self, source_age: int, target_age: int) -> float:
        s = self.settings
        return adani_strength(abs(target_age - source_age), s.t1, s.t2, s.one_threshold)

    @torch.no_grad()
    def first_pass(self, faces: torch.Tensor, target_ages: int | Sequence[int], source_ages: int | Sequence[int],
                   genders: str | Sequence[str], seed: int | Sequence[int] = 0, strength: float | None = None,
                   callback: StepCallback | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                   _progress: _Progress | None = None) -> FirstPassOutput:
        """AdaNI: img2img with the LoRA off, prompted with the target age and gender."""
        faces = self.prepare_faces(faces)
        plan = self._plan(faces.shape[0], target_ages, source_ages, genders, seed, strength)
        progress = _progress or _Progress(self._pass1_steps(plan["strengths"], batch_size), callback)
        encoded = self._encode(faces, batch_size)
        prompts = [aging_prompt(t, g) for t, g in zip(plan["target_ages"], plan["genders"])]
        embeds, pooled = self._encode_prompts(prompts)
        generators = [torch.Generator("cpu").manual_seed(s) for s in plan["seeds"]]
        latents: list[torch.Tensor | None] = [None] * len(prompts)
        with lora_enabled(self.pipe.unet, False):
            for group_strength, chunk in self._chunks(plan["strengths"], batch_size):
                out = self.sampler.run(encoded, [plan["source_index"][i] for i in chunk], group_strength,
                                       embeds[chunk], pooled[chunk], [generators[i] for i in chunk], progress)
                for i, row in zip(chunk, out):
                    latents[i] = row
        aged = self._decode(torch.stack(latents), batch_size)
        return FirstPassOutput(aged=aged, pooled_embeds=pooled.cpu(), **plan)

    def _plan(self, count, target_ages, source_ages, genders, seed, strength) -> dict:
        targets = [check_age(t, "target age") for t in _as_list(target_ages)]
        if not targets:
            raise ValueError("give at least one target age")
        sources = [check_age(a, f"source age of face {i}") for i, a in enumerate(_per_face(source_ages, count, "source ages"))]
        gender = [check_gender(g, f"gender of face {i}") for i, g in enumerate(_per_face(genders, count, "genders"))]
        seeds = [int(s) for s in _per_face(seed, count, "seeds")]
        if strength is not None:
            strength = check_strength(strength, self.settings.infer_step, "strength override")
        plan = {k: [] for k in ("source_index", "source_ages", "target_ages", "genders", "strengths", "seeds")}
        for b in range(count):
            for t in targets:
                plan["source_index"].append(b)
                plan["source_ages"].append(sources[b])
                plan["target_ages"].append(t)
                plan["genders"].append(gender[b])
                plan["strengths"].append(strength if strength is not None else self.strength_for(sources[b], t))
                plan["seeds"].append(seeds[b])
        return plan

    @staticmethod
    def _chunks(strengths: Sequence[float], batch_size: int):
        """Item indices grouped by strength (in first-seen order), cut to ``batch_size``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for value in dict.fromkeys(strengths):
            items = [i for i, s in enumerate(strengths) if s == value]
            for start in range(0, len(items), batch_size):
                yield value, items[start:start + batch_size]

    def _pass1_steps(self, strengths: Sequence[float], batch_size: int) -> int:
        return sum(unet_evaluations(s, self.settings.infer_step) for s, _ in self._chunks(strengths, batch_size))

    @torch.no_grad()
    def _encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        unique = list(dict.fromkeys(prompts))
        embeds, _, pooled, _ = self.pipe.encode_prompt(unique, device=self.device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
        index = torch.tensor([unique.index(p) for p in prompts], device=embeds.device)
        return embeds[index], pooled[index]

    def _encode(self, images: torch.Tensor, batch_size: int) -> EncodedImages:
        """VAE posteriors in chunks of ``batch_size``: bounded activation memory for long sweeps."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        parts = [self.sampler.encode(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        if len(parts) == 1:
            return parts[0]
        return EncodedImages(torch.cat([p.mean for p in parts]), torch.cat([p.std for p in parts]))

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
        return torch.cat([self.sampler.decode(latents[i:i + batch_size]).cpu()
                          for i in range(0, latents.shape[0], batch_size)])

    # ------------------------------------------------------------------ identity embedding

    @torch.no_grad()
    def identity_embeddings(self, faces: torch.Tensor, first: FirstPassOutput, aged: torch.Tensor | None = None,
                            use_swr: bool | None = None, clip_method: str | None = None,
                            swr_alpha: float | None = None, swr_beta: float | None = None) -> torch.Tensor:
        """Pass-2 conditioning [N, 2, D]: the SVR-ArcFace token and the Rotate-CLIP token."""
        s = self.settings
        use_swr = s.use_swr if use_swr is None else use_swr
        clip_method = clip_method or s.clip_map_model
        faces = self.prepare_faces(faces)
        aged = self.prepare_faces(first.aged if aged is None else aged)
        if aged.shape[0] != len(first):
            raise ValueError(f"aged images: got {aged.shape[0]} for {len(first)} pass-1 items")
        if max(first.source_index) >= faces.shape[0]:
            raise ValueError(f"pass 1 was run on {max(first.source_index) + 1} faces, got {faces.shape[0]} source faces")
        index = torch.tensor(first.source_index)
        source_hidden = arcface_hidden_state(self.arcface, faces).float()[index.to(self.device)]
        if use_swr:
            aged_hidden = arcface_hidden_state(self.arcface, aged).float()
            face_feat = svr_arcface(torch.stack([source_hidden, aged_hidden], dim=1),
                                    s.swr_alpha if swr_alpha is None else swr_alpha,
                                    s.swr_beta if swr_beta is None else swr_beta)
        else:
            face_feat = source_hidden
        face_token = self.face_projector(face_feat.to(self.dtype)).unsqueeze(1)
        image_feat = self.clip.image(faces)[index.to(self.clip.device)]
        source_text = self.clip.text([age_text(a) for a in first.source_ages])
        target_text = self.clip.text([age_text(a) for a in first.target_ages])
        clip_feat = rotate_clip(image_feat, source_text, target_text, clip_method)
        clip_token = self.clip_projector(clip_feat.to(self.device, self.dtype)).unsqueeze(1)
        return torch.cat([face_token, clip_token], dim=1)

    # ------------------------------------------------------------------ pass 2

    @torch.no_grad()
    def second_pass(self, first: FirstPassOutput, conditioning: torch.Tensor, aged: torch.Tensor | None = None,
                    seed: int | Sequence[int] | None = None, id_strength: float | None = None,
                    callback: StepCallback | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                    _progress: _Progress | None = None) -> torch.Tensor:
        """Identity pass: img2img on the aged images with the LoRA on, conditioned on identity."""
        id_strength = check_strength(self.settings.id_strength if id_strength is None else id_strength,
                                     self.settings.infer_step, "id_strength")
        aged = self.prepare_faces(first.aged if aged is None else aged)
        count = len(first)
        if aged.shape[0] != count or conditioning.shape[0] != count:
            raise ValueError(f"second pass: {aged.shape[0]} aged images and {conditioning.shape[0]} identity "
                             f"embeddings for {count} pass-1 items; they must match")
        seeds = first.seeds if seed is None else _per_face(seed, count, "seeds") if isinstance(seed, (list, tuple)) \
            else [int(seed)] * count
        steps = unet_evaluations(id_strength, self.settings.infer_step)
        progress = _progress or _Progress(steps * -(-count // batch_size), callback)
        encoded = self._encode(aged, batch_size)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        outputs = []
        with lora_enabled(self.pipe.unet, True):
            for start in range(0, count, batch_size):
                chunk = list(range(start, min(count, start + batch_size)))
                outputs.append(self.sampler.run(encoded, chunk, id_strength, conditioning[chunk],
                                                first.pooled_embeds[chunk], [generators[i] for i in chunk], progress))
        return self._decode(torch.cat(outputs), batch_size)

    # ------------------------------------------------------------------ all together

    def __call__(self, faces: torch.Tensor, target_ages: int | Sequence[int], source_ages: int | Sequence[int],
                 genders: str | Sequence[str], seed: int | Sequence[int] = 0, strength: float | None = None,
                 id_strength: float | None = None, callback: StepCallback | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> AgingResult:
        """Age aligned faces [B,3,H,W] (0..1) to each target age; both passes use ``seed``."""
        faces = self.prepare_faces(faces)
        id_strength = check_strength(self.settings.id_strength if id_strength is None else id_strength,
                                     self.settings.infer_step, "id_strength")
        plan = self._plan(faces.shape[0], target_ages, source_ages, genders, seed, strength)
        count = len(plan["strengths"])
        total = self._pass1_steps(plan["strengths"], batch_size) + \
            unet_evaluations(id_strength, self.settings.infer_step) * -(-count // batch_size)
        progress = _Progress(total, callback)
        first = self.first_pass(faces, target_ages, source_ages, genders, seed, strength,
                                batch_size=batch_size, _progress=progress)
        conditioning = self.identity_embeddings(faces, first)
        images = self.second_pass(first, conditioning, id_strength=id_strength, batch_size=batch_size,
                                  _progress=progress)
        return AgingResult(images=images, aged=first.aged, source_index=first.source_index,
                           source_ages=first.source_ages, target_ages=first.target_ages, genders=first.genders,
                           strengths=first.strengths, id_strength=id_strength, seeds=first.seeds)
