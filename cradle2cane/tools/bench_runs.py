"""The ways ``cradle2cane bench`` ages one face to many target ages, and how each run is measured.

* ``sweep``: ``Cradle2Cane.__call__`` once with every target age.
* ``per-age``: ``Cradle2Cane.__call__`` once per target age (the public API used naively).
* ``reference``: the reference inference script's loop, call for call: per age, a plain diffusers
  ``StableDiffusionXLImg2ImgPipeline`` call on the PIL input with the LoRA off (the prompt is
  encoded once, inside the pipeline; a step callback keeps the pooled embedding for pass 2), the
  identity embedding of the input and the PIL aged image (ArcFace on each, CLIP image and age
  texts, nothing cached), and a second plain call on the PIL aged image with the LoRA on,
  returning a PIL image.
* ``single``: ``Cradle2Cane.__call__`` for the last age only (one image, both passes).
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # torch is imported where it runs: `cradle2cane --help` stays light
    import torch

logger = logging.getLogger(__name__)

VARIANTS = ("sweep", "per-age", "reference", "single")


def to_pil(images: torch.Tensor) -> list:
    """[N,3,H,W] 0..1 -> 8-bit PIL images, rounded as diffusers makes them."""
    from PIL import Image

    from ..method.reference import to_uint8

    return [Image.fromarray(a) for a in to_uint8(images)]


def from_pil(images: Sequence) -> torch.Tensor:
    """8-bit PIL images -> [N,3,H,W] float32 0..1."""
    import numpy as np
    import torch

    from ..files.images import to_tensor

    return torch.cat([to_tensor(np.array(im.convert("RGB"))) for im in images])  # a writable copy


def reference_loop(model, face, ages: Sequence[int], source_age: int, gender: str, seed: int) -> list[tuple]:
    """The reference inference loop on ``face`` (a PIL image); returns (aged, final) PIL pairs.

    Its identity embedding prepares ArcFace and CLIP inputs as the script did (``reference_inference``).
    Pass 2 draws its noise from the core's derived seed rather than the script's global generator:
    the same work, and images comparable with the core's."""
    import torch

    from ..method.lora import lora_enabled
    from ..method.plan import second_pass_seed
    from ..method.prompts import age_text, aging_prompt

    pipe, settings = model.pipe, model.settings
    face_tensor = from_pil([face])
    results = []
    for age in ages:
        prompt = aging_prompt(age, gender)
        pooled: list[torch.Tensor] = []

        def keep_pooled(pipeline, step, timestep, tensors):
            pooled.append(tensors["add_text_embeds"].clone().detach().cpu())
            return {}

        with lora_enabled(pipe.unet, False):
            aged = pipe(prompt=prompt, image=face, num_inference_steps=settings.infer_step,
                        strength=model.strength_for(source_age, age), guidance_scale=1.0,
                        generator=torch.Generator("cpu").manual_seed(seed), num_images_per_prompt=1,
                        callback_on_step_end=keep_pooled,
                        callback_on_step_end_tensor_inputs=["latents", "add_text_embeds"]).images[0]
        model.clip.clear_cache()  # the script caches nothing; it encodes both age texts in one call
        if age != source_age:
            model.clip.text([age_text(source_age), age_text(age)])
        with torch.no_grad():
            conditioning = model.identity(face_tensor, from_pil([aged]), [0], [source_age], [age],
                                          reference_inference=True)
        with lora_enabled(pipe.unet, True):
            final = pipe(prompt_embeds=conditioning, pooled_prompt_embeds=pooled[0].to(conditioning.device),
                         image=aged, num_inference_steps=settings.infer_step, strength=settings.id_strength,
                         guidance_scale=1.0, generator=torch.Generator("cpu").manual_seed(second_pass_seed(seed)),
                         num_images_per_prompt=1).images[0]
        results.append((aged, final))
    return results


def model_modules(model) -> dict[str, torch.nn.Module | tuple[torch.nn.Module, torch.nn.Module]]:
    """The expensive parts of a ``Cradle2Cane`` that never run inside one another, by name."""
    pipe, clip, arcface = model.pipe, model.clip.model, model.arcface
    return {"unet": pipe.unet, "vae_encoder": pipe.vae.encoder, "vae_decoder": pipe.vae.decoder,
            "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2,
            "arcface": (arcface.conv1, arcface.bn2), "clip_vision": clip.vision_model, "clip_text": clip.text_model,
            "face_projector": model.face_projector, "clip_projector": model.clip_projector}


@dataclass
class VariantResult:
    name: str
    variant: str
    memory: str
    images: int
    times_s: list[float] = field(default_factory=list)
    peaks_mib: list[float] = field(default_factory=list)
    peak_kind: str = ""
    calls: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    profiles_s: list[dict[str, float]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times_s)

    @property
    def per_image_s(self) -> float:
        return self.seconds / self.images

    def profile(self) -> dict[str, float] | None:
        """Median seconds per module over the repeats, and ``other``: the rest of the run (Python,
        schedulers, image conversions, copies)."""
        if not self.profiles_s:
            return None
        names = self.profiles_s[0]
        return {name: statistics.median(p[name] for p in self.profiles_s) for name in names}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["profiles_s"]
        data.update(seconds_median=self.seconds, per_image_s_median=self.per_image_s,
                    peak_mib=max(self.peaks_mib) if self.peaks_mib else None, profile_s=self.profile())
        return data


@dataclass
class RunSettings:
    ages: list[int]
    source_age: int
    gender: str
    seed: int
    batch_size: int
    repeats: int
    warmup: int
    profile: bool = False
    reference_inference: bool = False


class Bench:
    """Runs variants on one model and face, alternating their order between repeats."""

    def __init__(self, model, face: torch.Tensor, settings: RunSettings) -> None:
        from ..runtime.diagnostics import Clock

        self.model = model
        self.face = face  # [1,3,H,W] with 8-bit values, so the PIL input of ``reference`` is the same face
        self.face_pil = to_pil(face)[0]
        self.o = settings
        self.clock = Clock(model.device)
        self.outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _call(self, ages: Sequence[int]):
        o = self.o
        return self.model(self.face, list(ages), o.source_age, o.gender, seed=o.seed, batch_size=o.batch_size,
                          reference_inference=o.reference_inference)

    def run_variant(self, variant: str):
        o = self.o
        if variant == "reference":
            return reference_loop(self.model, self.face_pil, o.ages, o.source_age, o.gender, o.seed)
        if variant == "per-age":
            return [self._call([age]) for age in o.ages]
        return [self._call(o.ages if variant == "sweep" else o.ages[-1:])]

    @staticmethod
    def images_of(variant: str, raw) -> tuple[torch.Tensor, torch.Tensor]:
        """(final, aged) [N,3,H,W] float32 on the CPU, whatever the variant returned."""
        import torch

        if variant == "reference":
            return from_pil([final for _, final in raw]), from_pil([aged for aged, _ in raw])
        return torch.cat([r.images.float().cpu() for r in raw]), torch.cat([r.aged.float().cpu() for r in raw])

    def measure(self, result: VariantResult, timed: bool) -> None:
        from ..runtime.diagnostics import ModuleMeter, peak_memory_mib, reset_peak_memory

        self.model.clip.clear_cache()  # every run starts cold: no age texts from an earlier run
        reset_peak_memory(self.model.device)
        clock = self.clock if self.o.profile else None
        with ModuleMeter(model_modules(self.model), clock) as meter:
            elapsed, raw = self.clock.time(lambda: self.run_variant(result.variant))
        peak, kind = peak_memory_mib(self.model.device)
        if timed:
            result.times_s.append(elapsed)
            result.peaks_mib.append(peak)
            result.peak_kind = kind
            result.calls, result.rows = dict(meter.calls), dict(meter.rows)
            if self.o.profile:
                result.profiles_s.append({**meter.seconds, "other": elapsed - sum(meter.seconds.values())})
            self.outputs[result.name] = self.images_of(result.variant, raw)
        logger.info("%s: %.3f s%s", result.name, elapsed, "" if timed else " (warm-up)")

    def phase(self, variants: Sequence[str], memory: str, progress) -> list[VariantResult]:
        o = self.o
        results = [VariantResult(name=v if memory == "default" else f"{v}+{memory}", variant=v, memory=memory,
                                 images=1 if v == "single" else len(o.ages)) for v in variants]
        for _ in range(o.warmup):
            for result in results:
                self.measure(result, timed=False)
        for repeat in range(o.repeats):
            order = results if repeat % 2 == 0 else results[::-1]  # alternate to cancel drift
            for result in order:
                self.measure(result, timed=True)
            progress(f"repeat {repeat + 1}/{o.repeats} [{memory}]: " +
                     ", ".join(f"{r.name} {r.times_s[-1]:.3f} s" for r in results))
        return results

    def run(self, variants: Sequence[str], memory_modes: Sequence[str], progress) -> list[VariantResult]:
        from ..runtime.offload import set_memory_mode

        device = self.model.device
        results = []
        for memory in memory_modes:
            chosen = [v for v in variants if memory == "default" or v != "reference"]
            if not chosen:
                continue
            if memory != "default":
                set_memory_mode(self.model, memory, device)
            try:
                results += self.phase(chosen, memory, progress)
            finally:
                if memory != "default":
                    set_memory_mode(self.model, "default", device)
                    self.model.release_memory()
        return results

    def differences(self) -> dict[str, dict[str, float | None]]:
        """Max |difference| of images between variants (same seed): per-age and reference against
        the sweep, single against the sweep's last age, and each memory mode against the default
        mode of the same variant. The reference's images are 8-bit (PIL), so expect up to about
        1/255 there, plus what its 8-bit aged image changes in pass 2."""
        outputs = self.outputs
        base = next((n for n in ("sweep", "per-age", "reference") if n in outputs), None)
        pairs = []
        if base is not None:
            for name in ("per-age", "reference"):
                if name in outputs and name != base:
                    pairs.append((f"{name}_vs_{base}", outputs[name], outputs[base]))
            if "single" in outputs:
                pairs.append((f"single_vs_{base}", outputs["single"], tuple(t[-1:] for t in outputs[base])))
        for name, value in outputs.items():
            plain = name.split("+")[0]
            if "+" in name and plain in outputs:
                pairs.append((f"{name}_vs_{plain}", value, outputs[plain]))
        return {label: {"final": _finite_or_none(float((a[0] - b[0]).abs().max())),
                        "aged": _finite_or_none(float((a[1] - b[1]).abs().max()))}
                for label, a, b in pairs}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
