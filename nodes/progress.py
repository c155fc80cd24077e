"""The core's ``callback(step, total)`` -> ComfyUI's progress bar, and cancelling between steps."""

from __future__ import annotations

from typing import Callable

import comfy.model_management as mm
import comfy.utils


def step_callback(node_id: str | None = None) -> Callable[[int, int], None]:
    """A callback for the core's samplers: checks for a cancel first (so Cancel stops within one
    UNet step; the core then restores the LoRA state), then moves the node's progress bar."""
    bar: comfy.utils.ProgressBar | None = None

    def callback(step: int, total: int) -> None:
        nonlocal bar
        mm.throw_exception_if_processing_interrupted()
        if bar is None:
            bar = comfy.utils.ProgressBar(total, node_id=node_id)
        bar.update_absolute(step, total)

    return callback


def check_cancel() -> None:
    """For loops without sampler steps (detection, paste-back): stop if the user cancelled."""
    mm.throw_exception_if_processing_interrupted()
