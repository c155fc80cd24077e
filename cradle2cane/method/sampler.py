"""The img2img sampler both passes run on SDXL-Turbo components.

It is diffusers' SDXL img2img reduced to what Cradle2Cane uses (4 steps, no CFG,
Euler-ancestral, trailing spacing), written out so that it can batch items of different target
ages, share the VAE encoding of one input across them, report every UNet step and stop between
steps. It draws its random numbers exactly as ``StableDiffusionXLImg2ImgPipeline`` does with one
generator per item, so a batched run equals the item-by-item run, and both equal the diffusers
pipeline for the same seed (tests check both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .adani import unet_evaluations

StepCallback = Callable[[int, int], None]

@dataclass
class EncodedImages:
    """VAE posterior of the input images, shared by every target age of an image."""

    mean: torch.Tensor  # [B, C, h, w] in the VAE's dtype
    std: torch.Tensor


class Img2ImgSampler:
    """SDXL img2img with per-item generators over a pipeline's components.

    Gradients follow torch's current mode: inference wraps calls in ``torch.no_grad()``, training
    backpropagates through the steps and the VAE decode.
    """

    def __init__(self, pipe, steps: int = 4) -> None:
        self.pipe = pipe
        self.steps = steps

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    def _vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def encode(self, images: torch.Tensor) -> EncodedImages:
        """images: [B,3,H,W] in 0..1."""
        vae = self.vae
        param = next(vae.parameters())
        x = (images.to(device=param.device, dtype=param.dtype) * 2.0 - 1.0)
        dist = vae.encode(x).latent_dist
        return EncodedImages(dist.mean, dist.std)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        param = next(vae.parameters())
        latents = latents.to(device=param.device, dtype=param.dtype) / vae.config.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def timesteps(self, strength: float):
        """A fresh scheduler set to the img2img tail for ``strength`` and its timesteps."""
        from diffusers import EulerAncestralDiscreteScheduler

        scheduler = EulerAncestralDiscreteScheduler.from_config(self.pipe.scheduler.config)
        scheduler.set_timesteps(self.steps, device=self.unet.device)
        t_start = self.steps - unet_evaluations(strength, self.steps)
        scheduler.set_begin_index(t_start * scheduler.order)
        return scheduler, scheduler.timesteps[t_start * scheduler.order:]

    def run(
        self,
        encoded: EncodedImages,
        source_index: Sequence[int],
        strength: float,
        prompt_embeds: torch.Tensor,
        pooled_embeds: torch.Tensor,
        generators: Sequence[torch.Generator],
        step: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Denoise one batch of items that share ``strength``; returns latents [N,C,h,w].

        Item i starts from ``encoded`` row ``source_index[i]`` and draws its noise from
        ``generators[i]`` in diffusers' order: posterior sample, then start noise, then one
        ancestral noise per step.
        """
        from diffusers.utils.torch_utils import randn_tensor

        unet = self.unet
        device, dtype = unet.device, unet.dtype
        scheduler, timesteps = self.timesteps(strength)
        rows = torch.as_tensor(list(source_index), device=encoded.mean.device)
        mean, std = encoded.mean[rows], encoded.std[rows]
        latents = []
        for i, generator in enumerate(generators):
            sample = randn_tensor(mean[i:i + 1].shape, generator=generator, device=mean.device, dtype=mean.dtype)
            latents.append(mean[i:i + 1] + std[i:i + 1] * sample)
        latents = (torch.cat(latents).to(dtype) * self.vae.config.scaling_factor).to(device)
        noise = randn_tensor(latents.shape, generator=list(generators), device=device, dtype=dtype)
        latents = scheduler.add_noise(latents, noise, timesteps[:1].repeat(latents.shape[0]))

        height, width = (s * self.pipe.vae_scale_factor for s in latents.shape[-2:])
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype)
        added = {"text_embeds": pooled_embeds.to(device, dtype), "time_ids": time_ids.repeat(latents.shape[0], 1)}
        context = prompt_embeds.to(device, dtype)
        for t in timesteps:
            model_input = scheduler.scale_model_input(latents, t)
            noise_pred = unet(model_input, t, encoder_hidden_states=context, added_cond_kwargs=added,
                              return_dict=False)[0]
            latents = scheduler.step(noise_pred, t, latents, generator=list(generators), return_dict=False)[0]
            if step is not None:
                step()
        return latents
