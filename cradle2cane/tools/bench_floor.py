"""The floor of a lifespan sweep, measured component by component.

The floor is the least work a sweep must do: every UNet row and every required VAE pass, each at
the batch size that is cheapest per row on this device, plus the text encoders, ArcFace, CLIP and
the projectors at theirs. Each component runs alone on synthetic inputs of the real shapes at
every power-of-two batch size up to the sweep's ``batch_size`` (and up to the rows it needs); its
cost per row is the median over the repeats. The floor is the sum of rows x best cost per row;
the sweep's efficiency is floor / sweep time. Per-row costs by batch size are also what the batch
policy (``cradle2cane.runtime.batching``) must agree with: the report shows both.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..method.adani import unet_evaluations
from ..method.prompts import age_text, aging_prompt
from ..runtime.diagnostics import Clock

UNET_TIMESTEP = 749.0  # any timestep costs the same


@dataclass
class ComponentCost:
    """One component's rows in a sweep and its measured cost per row at each batch size."""

    rows: int
    policy_batch: int | None = None
    per_row_s: dict[int, float] = field(default_factory=dict)

    @property
    def best_batch(self) -> int:
        return min(self.per_row_s, key=self.per_row_s.__getitem__)

    @property
    def floor_s(self) -> float:
        return self.rows * self.per_row_s[self.best_batch]

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "per_row_s": {str(b): s for b, s in self.per_row_s.items()},
                "best_batch": self.best_batch, "policy_batch": self.policy_batch, "floor_s": self.floor_s}


def required_rows(model, ages: Sequence[int], source_age: int, id_strength: float | None = None) -> dict[str, int]:
    """Rows each component must process to age one face to ``ages`` (both passes)."""
    s = model.settings
    id_strength = s.id_strength if id_strength is None else id_strength
    count = len(ages)
    return {
        "unet_pass1": sum(unet_evaluations(model.strength_for(source_age, a), s.infer_step) for a in ages),
        "unet_pass2": count * unet_evaluations(id_strength, s.infer_step),
        "vae_encoder": 1 + count,  # the input once, each aged image once
        "vae_decoder": 2 * count,  # each aged image, each final image
        "text_encoders": len(set(ages)),  # one prompt per target age
        "arcface": 1 + count if s.use_swr else 1,
        "clip_vision": 1,
        "clip_text": len({*ages, source_age}),
        "projectors": count,
    }


class _Probes:
    """Each component alone on synthetic inputs of ``b`` rows with the shapes a sweep gives it."""

    def __init__(self, model, resolution: int, gender: str) -> None:
        self.model, self.res, self.gender = model, resolution, gender
        pipe = model.pipe
        self.device = model.device
        self.unet_dtype = next(pipe.unet.parameters()).dtype
        self.vae_dtype = next(pipe.vae.parameters()).dtype
        self.latent = resolution // pipe.vae_scale_factor
        self.prompts = [aging_prompt(a, gender) for a in range(101)]
        embeds, _, pooled, _ = pipe.encode_prompt(self.prompts[:1], device=self.device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        self.embeds, self.pooled = embeds.to(self.unet_dtype), pooled.to(self.unet_dtype)
        self.images = torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))

    def _unet(self, rows: int, tokens: int | None) -> None:
        from ..method.lora import lora_enabled

        unet, device, dtype = self.model.pipe.unet, self.device, self.unet_dtype
        context = self.embeds.expand(rows, -1, -1) if tokens is None else \
            torch.randn(rows, tokens, self.embeds.shape[-1], device=device, dtype=dtype)
        size = self.res
        time_ids = torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=dtype).expand(rows, -1)
        latents = torch.randn(rows, unet.config.in_channels, self.latent, self.latent, device=device, dtype=dtype)
        with lora_enabled(unet, False):  # pass 2's floor is a fused LoRA: the base UNet's cost
            unet(latents, torch.tensor(UNET_TIMESTEP, device=device), encoder_hidden_states=context,
                 added_cond_kwargs={"text_embeds": self.pooled.expand(rows, -1), "time_ids": time_ids},
                 return_dict=False)

    def _vae_encoder(self, rows: int) -> None:
        x = self.images.expand(rows, -1, -1, -1).to(self.device, self.vae_dtype) * 2 - 1
        self.model.pipe.vae.encode(x)

    def _vae_decoder(self, rows: int) -> None:
        vae = self.model.pipe.vae
        z = torch.randn(rows, vae.config.latent_channels, self.latent, self.latent, device=self.device,
                        dtype=self.vae_dtype)
        vae.decode(z, return_dict=False)

    def _text_encoders(self, rows: int) -> None:
        self.model.pipe.encode_prompt(self.prompts[:rows], device=self.device, num_images_per_prompt=1,
                                      do_classifier_free_guidance=False)

    def _arcface(self, rows: int) -> None:
        from ..method.arcface import arcface_hidden_state

        arcface_hidden_state(self.model.arcface, self.images.expand(rows, -1, -1, -1))

    def _clip_vision(self, rows: int) -> None:
        self.model.clip.image(self.images.expand(rows, -1, -1, -1))

    def _clip_text(self, rows: int) -> None:
        self.model.clip.clear_cache()
        self.model.clip.text([age_text(a) for a in range(rows)])

    def _projectors(self, rows: int) -> None:
        m = self.model
        for projector in (m.face_projector, m.clip_projector):
            width = projector.in_dim
            dtype = next(projector.parameters()).dtype
            projector(torch.randn(rows, width, device=self.device, dtype=dtype))

    def get(self, name: str) -> Callable[[int], None]:
        if name == "unet_pass1":
            return lambda rows: self._unet(rows, None)
        if name == "unet_pass2":
            return lambda rows: self._unet(rows, 2)  # pass 2's context: the ArcFace and CLIP tokens
        return getattr(self, f"_{name}")


def probe_batches(rows: int, cap: int) -> list[int]:
    """1, 2, 4, ... up to ``min(rows, cap)``."""
    limit, batches, b = max(1, min(rows, cap)), [], 1
    while b <= limit:
        batches.append(b)
        b *= 2
    return batches


@torch.no_grad()
def measure_floor(model, ages: Sequence[int], source_age: int, gender: str, batch_size: int, repeats: int,
                  clock: Clock, policy: dict[str, int] | None = None, progress=None) -> dict[str, ComponentCost]:
    """Per-component costs and rows for aging one face to ``ages``; repeats alternate the order of
    the batch sizes, one untimed call of each first."""
    policy = policy or {}
    probes = _Probes(model, model.resolution, gender)
    costs: dict[str, ComponentCost] = {}
    for name, rows in required_rows(model, ages, source_age).items():
        run = probes.get(name)
        batches = probe_batches(rows, batch_size)
        for b in batches:
            run(b)
        samples: dict[int, list[float]] = {b: [] for b in batches}
        for repeat in range(repeats):
            for b in (batches if repeat % 2 == 0 else batches[::-1]):
                seconds, _ = clock.time(lambda: run(b))
                samples[b].append(seconds / b)
        costs[name] = ComponentCost(rows=rows, policy_batch=policy.get(name),
                                    per_row_s={b: statistics.median(v) for b, v in samples.items()})
        if progress is not None:
            cost = costs[name]
            progress(f"floor: {name}: {rows} rows, best batch {cost.best_batch}, {cost.floor_s:.3f} s")
    return costs


def floor_report(costs: dict[str, ComponentCost], images: int, sweep_s: float | None) -> dict[str, Any]:
    seconds = sum(c.floor_s for c in costs.values())
    return {"seconds": seconds, "per_image_s": seconds / images,
            "sweep_efficiency": seconds / sweep_s if sweep_s else None,
            "components": {name: c.to_json() for name, c in costs.items()}}
