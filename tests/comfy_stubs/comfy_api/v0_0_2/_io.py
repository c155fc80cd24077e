"""Test stand-in for ``comfy_api.v0_0_2.io``: the V3 schema classes the nodes use, with ComfyUI's
signatures, storing what they are given (the real ones are exercised by the real-server tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class Input:
    Parent: Any = None

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None, lazy: bool = None,
                 default: Any = None, **extra):
        self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
        self.default, self.extra = default, extra

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


class Output:
    Parent: Any = None

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None, is_output_list=False):
        self.id, self.display_name, self.tooltip = id, display_name, tooltip

    @property
    def io_type(self) -> str:
        return self.Parent.io_type


class ComfyTypeIO:
    io_type: str = None
    Input = Input
    Output = Output


def _comfytype(io_type: str, base: type = ComfyTypeIO) -> type[ComfyTypeIO]:
    cls = type(io_type, (base,), {"io_type": io_type})
    cls.Input = type("Input", (base.Input,), {"Parent": cls})
    cls.Output = type("Output", (base.Output,), {"Parent": cls})
    return cls


def Custom(io_type: str) -> type[ComfyTypeIO]:
    return _comfytype(io_type)


Image, Int, Float, String, Boolean = (_comfytype(t) for t in ("IMAGE", "INT", "FLOAT", "STRING", "BOOLEAN"))


class _ComboInput(Input):
    def __init__(self, id: str, options: list = None, **kwargs):
        super().__init__(id, **kwargs)
        self.options = options


Combo = _comfytype("COMBO", type("ComboBase", (ComfyTypeIO,), {"Input": _ComboInput}))


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    description: str = ""


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        return cls.define_schema()


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None):
        self.args, self.ui = args, ui
