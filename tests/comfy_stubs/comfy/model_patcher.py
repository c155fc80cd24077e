"""Test stand-in for ``comfy.model_patcher``: a ``ModelPatcher`` that only remembers its model."""

from __future__ import annotations


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size

    def loaded_size(self) -> int:
        return 0

    def model_size(self) -> int:
        return sum(t.nelement() * t.element_size() for t in self.model.state_dict().values())
