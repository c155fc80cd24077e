"""Identity conditioning for pass 2: SVR-ArcFace and Rotate-CLIP (docs/method.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it runs: reading hparams.yml (CLIP_MAP_METHODS) needs no torch
    import torch

CLIP_MAP_METHODS = ("angle", "vector")


def svr_arcface(hidden_states: torch.Tensor, alpha: float = 0.01, beta: float = 1.1) -> torch.Tensor:
    """Singular-value reweighting of ArcFace hidden states.

    ``hidden_states`` holds rows N x C (the input image first, then its aged image(s)), or a batch
    B x N x C. The rows are decomposed as M = X^T = U S V^T, each singular value becomes
    s * exp(alpha * s) * beta, and the input's row of the rebuilt matrix is returned ([C] or
    [B, C]). Computed in float32 whatever the input dtype.
    """
    import torch

    if hidden_states.ndim not in (2, 3):
        raise ValueError(f"svr_arcface: expected [N, C] or [B, N, C] hidden states, got {tuple(hidden_states.shape)}")
    x = hidden_states.float()
    m = x.transpose(-1, -2)  # C x N
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    s = s * torch.exp(alpha * s) * beta
    rebuilt = (u * s.unsqueeze(-2)) @ vh  # C x N
    return rebuilt.transpose(-1, -2)[..., 0, :]


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation along the last dimension (linear when nearly parallel)."""
    import torch
    import torch.nn.functional as F

    v0n, v1n = F.normalize(v0, dim=-1), F.normalize(v1, dim=-1)
    dot = (v0n * v1n).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    nearly_parallel = dot.abs() > dot_threshold
    safe_sin = torch.where(nearly_parallel, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(nearly_parallel, torch.full_like(dot, 1.0 - t), torch.sin((1.0 - t) * theta) / safe_sin)
    w1 = torch.where(nearly_parallel, torch.full_like(dot, t), torch.sin(t * theta) / safe_sin)
    return w0 * v0 + w1 * v1


def rotate_clip(image_feat: torch.Tensor, source_text_feat: torch.Tensor, target_text_feat: torch.Tensor,
                method: str = "angle") -> torch.Tensor:
    """Move a CLIP image feature from the source age towards the target age.

    ``angle`` (released default): shift = slerp(0.5, target, source) - source; ``vector``:
    shift = target - source. All features are L2-normalised first; the result is normalise(image +
    shift). When the two text features are equal the shift is zero and the (normalised) image
    feature comes back unchanged.
    """
    import torch
    import torch.nn.functional as F

    if method not in CLIP_MAP_METHODS:
        raise ValueError(f"rotate_clip: method must be one of {CLIP_MAP_METHODS}, got {method!r}")
    image = F.normalize(image_feat.float(), dim=-1)
    source = F.normalize(source_text_feat.float(), dim=-1)
    target = F.normalize(target_text_feat.float(), dim=-1)
    if method == "angle":
        shift = slerp(0.5, target, source) - source
    else:
        shift = target - source
    same = (source == target).all(dim=-1, keepdim=True)
    shift = torch.where(same, torch.zeros_like(shift), shift)
    return F.normalize(image + shift, dim=-1)
