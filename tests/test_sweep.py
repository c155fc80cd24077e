"""A lifespan sweep in one call equals the item-by-item calls, and shares the work it can share.

Item-by-item means one ``Cradle2Cane.__call__`` per target age with the same seed: each item
draws its noise from its own generator, so batching and chunking must not change any pixel beyond
float rounding.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from cradle2cane.method.adani import unet_evaluations

AGES = [1, 5, 9, 13, 18, 22, 26, 30, 34, 38, 43, 47, 51, 55, 59, 63, 68, 72, 76, 80]
SOURCE_AGE, GENDER, SEED = 30, "female", 11
TOL = dict(atol=1e-4, rtol=0)  # observed differences are ~1e-5 (fp32, batched vs single convolutions)


class Spy:
    """Rows fed to selected modules, one list entry per forward call."""

    def __init__(self, **modules: torch.nn.Module) -> None:
        self.modules = modules
        self.rows: dict[str, list[int]] = defaultdict(list)
        self.handles: list = []

    def __enter__(self) -> "Spy":
        for name, module in self.modules.items():
            def hook(mod, args, kwargs, name=name):
                first = next(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
                self.rows[name].append(int(first.shape[0]))
            self.handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def spy_on(model) -> Spy:
    pipe = model.pipe
    return Spy(vae_encoder=pipe.vae.encoder, vae_decoder=pipe.vae.decoder, text_encoder=pipe.text_encoder,
               text_encoder_2=pipe.text_encoder_2, unet=pipe.unet, clip_vision=model.clip.model.vision_model,
               clip_text=model.clip.model.text_model, arcface=model.arcface.conv1)


@pytest.fixture(scope="module")
def face():
    return torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(77))


@pytest.fixture(scope="module")
def item_by_item(tiny_model, face):
    """(final, aged, UNet rows) of one call per age."""
    finals, ageds = [], []
    with spy_on(tiny_model) as spy:
        for age in AGES:
            result = tiny_model(face, [age], SOURCE_AGE, GENDER, seed=SEED)
            finals.append(result.images)
            ageds.append(result.aged)
    return torch.cat(finals), torch.cat(ageds), sum(spy.rows["unet"])


def test_the_sweep_covers_all_three_strengths(tiny_model):
    strengths = {tiny_model.strength_for(SOURCE_AGE, age) for age in AGES}
    assert strengths == {0.25, 0.5, 0.75}  # so chunking crosses strength groups


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_sweep_equals_item_by_item(tiny_model, face, item_by_item, batch_size):
    """Both passes' outputs match; the progress total is the number of UNet evaluations; the UNet
    sees as many rows as in the single calls (batching saves calls, not work)."""
    reports = []
    with spy_on(tiny_model) as spy:
        result = tiny_model(face, AGES, SOURCE_AGE, GENDER, seed=SEED, batch_size=batch_size,
                            callback=lambda step, total: reports.append((step, total)))
    final, aged, single_rows = item_by_item
    assert result.target_ages == AGES and result.source_index == [0] * len(AGES)
    assert result.images.shape == final.shape == (len(AGES), 3, 128, 128)
    torch.testing.assert_close(result.aged, aged, **TOL)  # pass 1
    torch.testing.assert_close(result.images, final, **TOL)  # pass 2
    assert (result.images - result.aged).abs().max() > 1e-3  # pass 2 did change the images

    calls = len(spy.rows["unet"])
    assert {total for _, total in reports} == {calls}
    assert [step for step, _ in reports] == list(range(1, calls + 1))
    # One UNet call per denoising step carries every strength active at that step, cut only by
    # batch_size: pass 1 costs sum over steps of ceil(active / batch_size) calls.
    steps = tiny_model.settings.infer_step
    evaluations = [unet_evaluations(tiny_model.strength_for(SOURCE_AGE, age), steps) for age in AGES]
    active = [sum(1 for e in evaluations if e >= steps - k) for k in range(steps)]
    pass_two = math.ceil(len(AGES) / batch_size) * unet_evaluations(tiny_model.settings.id_strength, steps)
    assert calls == sum(math.ceil(n / batch_size) for n in active) + pass_two
    assert max(spy.rows["unet"]) <= batch_size
    assert sum(spy.rows["unet"]) == single_rows == sum(e + 1 for e in evaluations)


def _calls_grouped_by_strength(strengths, batch_size, steps):
    """UNet calls when every strength group is denoised on its own (chunks never mix strengths)."""
    groups = defaultdict(int)
    for s in strengths:
        groups[s] += 1
    return sum(math.ceil(n / batch_size) * unet_evaluations(s, steps) for s, n in groups.items())


@pytest.mark.parametrize("batch_size, pass_one_calls", [(8, 6), (20, 3)])
def test_one_unet_call_per_step_across_strengths(tiny_model, face, batch_size, pass_one_calls):
    """Pass 1 of the 20-age sweep: with batch_size >= 20 every step is one call (3 steps for 0.75,
    the longest strength here); with 8 it is ceil(active / 8) per step, fewer than denoising each
    strength group on its own."""
    strengths = [tiny_model.strength_for(SOURCE_AGE, age) for age in AGES]
    with spy_on(tiny_model) as spy:
        tiny_model.first_pass(face, AGES, SOURCE_AGE, GENDER, seed=SEED, batch_size=batch_size)
    assert len(spy.rows["unet"]) == pass_one_calls
    assert pass_one_calls < _calls_grouped_by_strength(strengths, batch_size, tiny_model.settings.infer_step)
    assert tiny_model.sampler.unet_calls(strengths, batch_size) == pass_one_calls


def test_two_face_sweep_equals_item_by_item(tiny_model, faces):
    ages, sources, genders, seeds = [4, 35, 79], [25, 60], ["male", "female"], [3, 7]
    result = tiny_model(faces, ages, sources, genders, seed=seeds, batch_size=4)
    assert result.source_index == [0, 0, 0, 1, 1, 1]
    for b in range(2):
        for j, age in enumerate(ages):
            single = tiny_model(faces[b:b + 1], [age], sources[b], genders[b], seed=seeds[b])
            torch.testing.assert_close(result.aged[b * 3 + j], single.aged[0], **TOL)
            torch.testing.assert_close(result.images[b * 3 + j], single.images[0], **TOL)


def test_sweep_shares_work(tiny_model, faces):
    """Two faces (same gender) x 20 ages = 40 items: each input face is VAE-encoded once in pass
    1, each aged image once in pass 2, and the 20 distinct prompts are encoded once."""
    batch_size = 8
    with spy_on(tiny_model) as spy:
        result = tiny_model(faces, AGES, [30, 52], GENDER, seed=SEED, batch_size=batch_size)
    items = 2 * len(AGES)
    assert len(result.target_ages) == items
    encodes = spy.rows["vae_encoder"]
    assert encodes[0] == 2  # pass 1: the two input faces, once, for all 20 ages
    assert sum(encodes) == 2 + items  # pass 2: every aged image exactly once
    assert len(encodes) == 1 + math.ceil(items / batch_size)
    assert spy.rows["text_encoder"] == [len(AGES)]  # 20 unique prompts, one batched call
    assert spy.rows["text_encoder_2"] == [len(AGES)]
    assert spy.rows["clip_vision"] == [2]  # CLIP image features of the inputs once
    assert sum(spy.rows["vae_decoder"]) == 2 * items  # pass-1 and pass-2 images, chunked
    assert max(spy.rows["vae_decoder"]) <= batch_size and max(spy.rows["unet"]) <= batch_size
    # ArcFace: the 2 inputs once, plus every aged image once (SVR-ArcFace)
    assert sum(spy.rows["arcface"]) == 2 + items


def test_the_hot_path_never_walks_the_models_for_their_device_or_dtype(tiny_model, faces, monkeypatch):
    """diffusers' ``ModelMixin.device``/``.dtype`` walk every module (about 23 ms each on the full-size
    UNet with its LoRA): the sampler keeps both, so a sweep reads them no matter how many UNet calls
    it makes, and transformers' models are asked a fixed number of times, not once per age."""
    from diffusers import ModelMixin
    from transformers import PreTrainedModel

    reads: dict[str, int] = defaultdict(int)
    for cls in (ModelMixin, PreTrainedModel):
        for name in ("device", "dtype"):
            original = getattr(cls, name)

            def counted(self, original=original, key=f"{cls.__name__}.{name}"):
                reads[key] += 1
                return original.fget(self)

            monkeypatch.setattr(cls, name, property(counted))
    per_run = []
    for ages in ([20, 70], [5, 20, 35, 50, 65, 80]):
        reads.clear()
        tiny_model(faces[:1], ages, 30, "male", seed=0, batch_size=1)  # batch 1: a UNet call per row
        per_run.append(dict(reads))
    assert not any(k.startswith("ModelMixin") for run in per_run for k in run), per_run
    assert per_run[0] == per_run[1], per_run
