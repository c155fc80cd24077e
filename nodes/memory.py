"""A loaded Cradle2Cane as ComfyUI's memory manager sees it: four models, loaded and unloaded by ComfyUI.

Each component group of the core (``Cradle2Cane.component_groups()``: the text encoders, the UNet
with its LoRA, the VAE, and the identity models = ArcFace, CLIP-L and the two projectors) is one
``ModelPatcher`` whose size is the bytes of its weights. ComfyUI lists them among its loaded models,
counts them when another model needs room (and unloads them then), releases them on "Unload models"
/ ``POST /free``, and we load them through ``comfy.model_management.load_models_gpu`` before they run:
hooks on each group (the core's offload hooks, :class:`ComfyGroups`) ask for a group the moment one
of its modules is called, so whatever ComfyUI unloaded comes back.

Our modules are diffusers/transformers modules, not ``comfy.ops`` layers that can compute with part
of their weights left on the CPU, so a group is only ever loaded or unloaded whole
(:class:`GroupPatcher`). How many groups share the device (the loader's ``memory``):

* ``default``: a node loads every group together before it runs, as ComfyUI loads a checkpoint
  before sampling, unless they cannot fit in the device's memory at once or ComfyUI runs with
  ``--lowvram`` / ``--novram``; then one group at a time, as below.
* ``model offload``: one group at a time: loading a group unloads our other groups first, so the
  peak is the UNet (with its LoRA).
* ``low-vram``: ``model offload`` plus VAE slicing and tiling.

ComfyUI's flags keep their meaning: ``--cpu`` runs everything on the CPU (the groups are still
listed, as ComfyUI lists its own models there); with ``--gpu-only`` (and for the UNet with
``--highvram``) ComfyUI's offload device is the GPU, so an unloaded group stays there.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import comfy.model_management as mm
import comfy.model_patcher
import torch

from ..cradle2cane.method.lora import tuner_layers
from ..cradle2cane.runtime.offload import ModelOffload

logger = logging.getLogger(__name__)

DEFAULT, ONE_GROUP, LOW_VRAM = "default", "model offload", "low-vram"
MEMORY_MODES = (DEFAULT, ONE_GROUP, LOW_VRAM)
OFFLOAD_DEVICE = {  # ComfyUI's parking place for each kind of model
    "text_encoders": mm.text_encoder_offload_device,
    "unet": mm.unet_offload_device,
    "vae": mm.vae_offload_device,
    "identity": mm.text_encoder_offload_device,  # as ComfyUI's CLIP vision models
}


class ComponentGroup(torch.nn.Module):
    """The modules of one group, as one module for a ``ModelPatcher`` (the modules stay shared with
    the pipeline; only their device changes)."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        super().__init__()
        self.parts = torch.nn.ModuleList(modules)


@lru_cache(maxsize=None)
def group_class(name: str) -> type[ComponentGroup]:
    """``Cradle2Cane_unet`` etc.: the name ComfyUI's log and loaded-model list show."""
    return type(f"Cradle2Cane_{name}", (ComponentGroup,), {})


class GroupPatcher(comfy.model_patcher.ModelPatcher):
    """A ``ModelPatcher`` that loads and unloads its group whole: a partial load (``--lowvram``,
    ``--novram``, a nearly full GPU) becomes a full one, and a partial unload frees nothing, which
    makes ComfyUI unload the whole group instead."""

    def partially_load(self, device_to, extra_memory=0, *args, **kwargs):
        return super().partially_load(device_to, 1e32, *args, **kwargs)  # 1e32: ComfyUI's "everything"

    def partially_unload(self, device_to, memory_to_free=0, *args, **kwargs):
        return 0


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.nelement() * tensor.element_size()


def _in_use(patcher: GroupPatcher) -> bool:
    """Loaded by ComfyUI now (listed, and its weights on the load device)."""
    return patcher.loaded_size() > 0 and any(entry.model is patcher for entry in mm.current_loaded_models)


def unload(patchers) -> None:
    """Unload these groups through ComfyUI's ledger (the unload ComfyUI itself does)."""
    for entry in list(mm.current_loaded_models):
        if any(entry.model is p for p in patchers):
            entry.model_unload()
            mm.current_loaded_models.remove(entry)


class ComfyGroups(ModelOffload):
    """The core's offload hooks with ComfyUI deciding what is on the device: a group is loaded with
    ``load_models_gpu`` when one of its modules runs and is not loaded (ComfyUI may have unloaded it
    for another model); with ``one_at_a_time`` our other groups are unloaded first."""

    def __init__(self, model, load_device: torch.device, memory: str) -> None:
        groups = model.component_groups()
        self.patchers = {}
        for name, modules in groups.items():
            container = group_class(name)(modules)
            self.patchers[name] = GroupPatcher(container, load_device=load_device,
                                               offload_device=torch.device(OFFLOAD_DEVICE[name]()))
        super().__init__(groups, load_device, offload_device="cpu")  # where the loader built them
        # Working memory beyond the weights that ComfyUI should keep free: pass 2 folds the LoRA into a
        # copy of the attention weights (Cradle2Cane._identity_lora), except with VAE slicing (low-vram).
        self.working = {name: 0 for name in groups}
        if memory != LOW_VRAM:
            unet = groups["unet"][0]
            self.working["unet"] = sum(_bytes(layer.get_base_layer().weight) for layer in tuner_layers(unet))
        self.one_at_a_time = memory != DEFAULT or mm.vram_state in (mm.VRAMState.LOW_VRAM, mm.VRAMState.NO_VRAM) \
            or not self._fits(load_device)
        for patcher in self.patchers.values():  # ComfyUI's parking places (only --gpu-only/--highvram differ)
            patcher.model.to(patcher.offload_device)

    def _fits(self, device: torch.device) -> bool:
        total = sum(p.model_size() for p in self.patchers.values()) + max(self.working.values())
        room = mm.get_total_memory(device) - mm.minimum_inference_memory()
        if total <= room:
            return True
        logger.info("Cradle2Cane: its %.1f GB of weights and working memory do not fit in the %.1f GB %s "
                    "leaves: loading one group at a time", total / 1e9, room / 1e9, device)
        return False

    def load(self, name: str) -> None:
        patcher = self.patchers[name]
        if _in_use(patcher):
            self.resident = name
            return
        if self.one_at_a_time:
            unload([p for n, p in self.patchers.items() if n != name])
        mm.load_models_gpu([patcher], memory_required=self.working[name], force_full_load=True)
        self.resident = name
        self.loads[name] += 1
        self.history.append(name)

    def load_all(self) -> None:
        """Before a node runs: every group at once (ComfyUI makes room for all of them in one go)
        unless loading one group at a time."""
        if not self.one_at_a_time:
            mm.load_models_gpu(list(self.patchers.values()), memory_required=max(self.working.values()),
                               force_full_load=True)

    def offload_all(self) -> None:
        unload(self.patchers.values())
        self.resident = None
