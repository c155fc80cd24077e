"""The generator losses (docs/training.md) and the PatchGAN discriminator.

Every function takes images in 0..1, [B,3,H,W], and returns an unweighted scalar; the trainer
multiplies by the configured weights. Frozen networks (ArcFace, LPIPS, the age regressor, the
discriminator inside the generator loss) never receive gradients here.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from cradle2cane.method.arcface import IResNet, arcface_embedding

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# ----------------------------------------------------------------------------- pixel losses


@lru_cache(maxsize=8)
def _centre_mask_cpu(height: int, width: int, centre: float, edge: float, sigma: float) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    gauss = torch.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return gauss * (centre - edge) + edge


def centre_weight(height: int, width: int, device=None, centre: float = 2.0, edge: float = 0.5,
                  sigma: float = 0.5) -> torch.Tensor:
    """[1,1,H,W]: a Gaussian bump, ``centre`` in the middle falling towards ``edge`` at the border."""
    return _centre_mask_cpu(height, width, centre, edge, sigma).to(device).view(1, 1, height, width)


def pixel_mse(a: torch.Tensor, b: torch.Tensor, centre_weighted: bool = True) -> torch.Tensor:
    err = (a.float() - b.float()) ** 2
    if centre_weighted:
        err = err * centre_weight(a.shape[-2], a.shape[-1], a.device)
    return err.mean()


# ----------------------------------------------------------------------------- MS-SSIM


def _gaussian(size: int, sigma: float, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _ssim_parts(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, data_range: float):
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mu_x ** 2
    syy = _blur(y * y, g) - mu_y ** 2
    sxy = _blur(x * y, g) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    ssim = ((2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)) * cs
    return ssim.flatten(2).mean(-1), cs.flatten(2).mean(-1)  # [B, C]


def ms_ssim_levels(size: int, win_size: int = 11, max_levels: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Scales that fit: the coarsest one must still be at least one window wide."""
    levels = 1
    while levels < max_levels and size / 2 ** levels >= win_size:
        levels += 1
    return levels


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
            sigma: float = 1.5) -> torch.Tensor:
    """Multi-scale SSIM (Wang et al. 2003), valid (unpadded) Gaussian windows, averaged to a scalar.

    At 512 px all five scales are used. Smaller images use as many scales as fit (4 at 128 px) with
    the standard weights renormalised to sum to one.
    """
    x, y = x.float(), y.float()
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ms_ssim: need two [B,C,H,W] batches of the same shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    side = min(x.shape[-2:])
    if side < win_size:
        raise ValueError(f"ms_ssim: images of {side}px are smaller than the {win_size}px window")
    levels = ms_ssim_levels(side, win_size)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], device=x.device)
    weights = weights / weights.sum()
    g = _gaussian(win_size, sigma, x.device, x.dtype)
    values = []
    for level in range(levels):
        ssim, cs = _ssim_parts(x, y, g, data_range)
        values.append(ssim if level == levels - 1 else cs)
        if level < levels - 1:
            pad = (x.shape[-1] % 2, 0, x.shape[-2] % 2, 0)
            x = F.avg_pool2d(F.pad(x, pad, mode="replicate"), 2)
            y = F.avg_pool2d(F.pad(y, pad, mode="replicate"), 2)
    stacked = torch.stack(values, dim=0).clamp(min=1e-8)  # [L, B, C]; clamp keeps pow's gradient finite
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean()


# ----------------------------------------------------------------------------- identity


def identity_loss(net: IResNet, source: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        reference = arcface_embedding(net, source).float()
    return 1 - F.cosine_similarity(reference, arcface_embedding(net, output).float(), dim=-1).mean()


# ----------------------------------------------------------------------------- age


def age_loss(predicted_years: torch.Tensor, target_years: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between predicted and target age on the 0..1 scale (years / 100), times 10."""
    return F.smooth_l1_loss(predicted_years.float().flatten() / 100.0,
                            target_years.to(predicted_years.device).float().flatten() / 100.0, beta=1.0) * 10


def feature_cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=-1).mean()


# ----------------------------------------------------------------------------- adversarial


class PatchDiscriminator(nn.Module):
    """PatchGAN: four stride-2 4x4 convolutions (instance norm on all but the first), then a 1-channel map."""

    def __init__(self, in_channels: int = 3, base_channels: int = 64) -> None:
        super().__init__()
        c = base_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 4, 2, 1), nn.LeakyReLU(0.2)]
        for mult_in, mult_out in ((1, 2), (2, 4), (4, 8)):
            layers += [nn.Conv2d(c * mult_in, c * mult_out, 4, 2, 1), nn.InstanceNorm2d(c * mult_out, affine=True),
                       nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(c * 8, 1, 4, 1, 0))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def generator_hinge_loss(discriminator: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """-mean(D(fake)) with D's weights detached, so only the generator receives gradients."""
    params = {k: v.detach() for k, v in discriminator.named_parameters()}
    buffers = dict(discriminator.named_buffers())
    scores = torch.func.functional_call(discriminator, {**params, **buffers}, (fake.float(),))
    return -scores.float().mean()


def discriminator_hinge_loss(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), real and fake in one forward pass."""
    scores = discriminator(torch.cat([real.float(), fake.detach().float()])).float()
    real_scores, fake_scores = scores.split([real.shape[0], fake.shape[0]])
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def is_finite(value: torch.Tensor) -> bool:
    return bool(torch.isfinite(value).all()) if isinstance(value, torch.Tensor) else math.isfinite(value)
