"""Test stand-in for ``comfy.model_management``: CPU only; records what the nodes ask for."""

from __future__ import annotations

import threading

import torch

calls: list[tuple] = []  # (function name, args) in call order, for tests to inspect


class InterruptProcessingException(Exception):
    pass


_interrupt_lock = threading.RLock()
interrupt_processing = False


def get_torch_device() -> torch.device:
    return torch.device("cpu")


def unet_offload_device() -> torch.device:
    return torch.device("cpu")


def free_memory(memory_required, device, keep_loaded=[]):  # noqa: B006 - ComfyUI's signature
    calls.append(("free_memory", memory_required, device))
    return []


def soft_empty_cache(force: bool = False) -> None:
    calls.append(("soft_empty_cache",))


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
