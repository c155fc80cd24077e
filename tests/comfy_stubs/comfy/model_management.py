"""Test stand-in for ``comfy.model_management``: a CPU-only ComfyUI whose memory manager only records
which models the nodes ask it to load (the real one runs in tests/test_comfyui_integration.py)."""

from __future__ import annotations

import enum
import threading

import torch

calls: list[tuple] = []  # ("load_models_gpu", [model class names], memory_required) in call order
current_loaded_models: list = []  # the real one lists LoadedModel entries; nothing is ever loaded here


class VRAMState(enum.Enum):
    DISABLED, NO_VRAM, LOW_VRAM, NORMAL_VRAM, HIGH_VRAM, SHARED = range(6)


vram_state = VRAMState.DISABLED  # as with --cpu


class InterruptProcessingException(Exception):
    pass


_interrupt_lock = threading.RLock()
interrupt_processing = False


def get_torch_device() -> torch.device:
    return torch.device("cpu")


unet_offload_device = text_encoder_offload_device = vae_offload_device = get_torch_device


def get_total_memory(dev=None, torch_total_too=False) -> int:
    return 64 << 30


def minimum_inference_memory() -> int:
    return 1 << 30


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False) -> None:
    calls.append(("load_models_gpu", [type(m.model).__name__ for m in models], memory_required))


def interrupt_current_processing(value: bool = True) -> None:
    global interrupt_processing
    with _interrupt_lock:
        interrupt_processing = value


def processing_interrupted() -> bool:
    with _interrupt_lock:
        return interrupt_processing


def throw_exception_if_processing_interrupted() -> None:
    global interrupt_processing
    with _interrupt_lock:
        if interrupt_processing:
            interrupt_processing = False
            raise InterruptProcessingException()
