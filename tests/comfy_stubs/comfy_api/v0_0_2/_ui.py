"""Test stand-in for ``comfy_api.v0_0_2._ui``: the one UI output the pack uses."""

from __future__ import annotations


class _UIOutput:
    def as_dict(self) -> dict:
        raise NotImplementedError


class PreviewText(_UIOutput):
    """Text for the node's ``executed`` message and the prompt's history (``{"text": (value,)}``)."""

    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self) -> dict:
        return {"text": (self.value,)}
