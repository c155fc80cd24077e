"""Pass-2 conditioning: the SVR-ArcFace token and the Rotate-CLIP token, projected to the UNet.

``IdentityEncoder`` is the one implementation inference and training share. Gradients follow
torch's grad mode: the facade calls it under ``no_grad``; training calls it with gradients on so
the two projectors learn (ArcFace and CLIP are frozen).
"""

from __future__ import annotations

from typing import Sequence

import torch

from .arcface import IResNet, arcface_hidden_state
from .clip_features import ClipFeatures
from .identity import rotate_clip, svr_arcface
from .prompts import age_text


class IdentityEncoder:
    """[N, 2, D] identity conditioning from source faces, their aged images and the ages.

    ``feature_dtype`` is the dtype the projectors are fed (the UNet's weight dtype, as the reference
    training fed them); ``settings`` supplies ``use_swr``, ``swr_alpha``, ``swr_beta`` and
    ``clip_map_model`` unless a call overrides them.
    """

    def __init__(self, arcface: IResNet, face_projector: torch.nn.Module, clip: ClipFeatures,
                 clip_projector: torch.nn.Module, settings, feature_dtype: torch.dtype) -> None:
        self.arcface, self.face_projector = arcface, face_projector
        self.clip, self.clip_projector = clip, clip_projector
        self.settings = settings
        self.feature_dtype = feature_dtype

    def __call__(self, faces: torch.Tensor, aged: torch.Tensor, source_index: Sequence[int],
                 source_ages: Sequence[int], target_ages: Sequence[int], *, use_swr: bool | None = None,
                 clip_method: str | None = None, swr_alpha: float | None = None, swr_beta: float | None = None,
                 reference_inference: bool = False) -> torch.Tensor:
        """``faces`` [B,3,H,W] and ``aged`` [N,3,H,W] in 0..1; item i is face ``source_index[i]`` aged
        from ``source_ages[i]`` to ``target_ages[i]``. ``reference_inference`` prepares ArcFace and
        CLIP inputs as the reference inference script did (see ``reference``)."""
        s = self.settings
        use_swr = s.use_swr if use_swr is None else use_swr
        face_device = next(self.arcface.parameters()).device
        index = torch.as_tensor(list(source_index), device=face_device)
        source_hidden = arcface_hidden_state(self.arcface, faces, reference_inference).float()[index]
        if use_swr:
            aged_hidden = arcface_hidden_state(self.arcface, aged, reference_inference).float()
            face_feat = svr_arcface(torch.stack([source_hidden, aged_hidden], dim=1),
                                    s.swr_alpha if swr_alpha is None else swr_alpha,
                                    s.swr_beta if swr_beta is None else swr_beta)
        else:
            face_feat = source_hidden
        projector_device = next(self.face_projector.parameters()).device
        face_token = self.face_projector(face_feat.to(projector_device, self.feature_dtype)).unsqueeze(1)

        image_feat = self.clip.image(faces, reference_inference)[index.to(self.clip.device)]
        source_text = self.clip.text([age_text(a) for a in source_ages])
        target_text = self.clip.text([age_text(a) for a in target_ages])
        clip_feat = rotate_clip(image_feat, source_text, target_text, clip_method or s.clip_map_model)
        clip_device = next(self.clip_projector.parameters()).device
        clip_token = self.clip_projector(clip_feat.to(clip_device, self.feature_dtype)).unsqueeze(1)
        return torch.cat([face_token, clip_token.to(face_token.device)], dim=1)
