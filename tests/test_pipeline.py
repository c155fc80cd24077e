"""Loading the tiny set in both base formats and running the two passes."""

import logging
import shutil

import pytest
import torch

from cradle2cane import Cradle2Cane, ModelFileError, lora_enabled
from cradle2cane.method.lora import lora_is_enabled
from cradle2cane.method.plan import second_pass_seed


def _lora_layers(unet):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


def test_loads_every_component_with_its_settings(tiny_model):
    m = tiny_model
    assert m.resolution == 128 and m.settings.t1 == 10 and m.settings.t2 == 30
    assert m.settings.use_swr and m.settings.clip_map_model == "angle" and m.settings.id_strength == 0.25
    assert not m.face_projector.training and not m.clip_projector.training and not m.arcface.training
    assert m.face_projector.in_dim == m.arcface.hidden_dim == 784
    assert m.face_projector.out_dim == m.pipe.unet.config.cross_attention_dim == 96
    assert m.pipe.scheduler.config.timestep_spacing == "trailing"
    # The fp16-fix VAE folder replaced the base VAE.
    assert m.pipe.vae.config.force_upcast is False


def test_lora_rank_and_alpha_are_honoured(tiny_model):
    layers = _lora_layers(tiny_model.pipe.unet)
    assert layers, "the LoRA attached no layers"
    names = {n.rsplit(".", 1)[-1] for n, mod in tiny_model.pipe.unet.named_modules() if mod in layers}
    assert names == {"to_q", "to_k", "to_v", "0"}
    layer = layers[0]
    adapter = next(iter(layer.r))
    assert layer.r[adapter] == 4 and layer.scaling[adapter] == pytest.approx(8 / 4)


def test_lora_switch_restores_state_even_on_error(tiny_model):
    unet = tiny_model.pipe.unet
    assert lora_is_enabled(unet)
    with lora_enabled(unet, False):
        assert not lora_is_enabled(unet)
    assert lora_is_enabled(unet)
    with pytest.raises(RuntimeError, match="boom"):
        with lora_enabled(unet, False):
            raise RuntimeError("boom")
    assert lora_is_enabled(unet)


def test_interrupt_mid_pass_restores_lora(tiny_model, faces):
    class Interrupted(Exception):
        pass

    def cancel(step, total):
        raise Interrupted

    with pytest.raises(Interrupted):
        tiny_model(faces[:1], 70, 20, "male", callback=cancel)
    assert lora_is_enabled(tiny_model.pipe.unet)
    assert all(not layer.disable_adapters for layer in _lora_layers(tiny_model.pipe.unet))


def test_lora_changes_the_unet_and_pass_two_turns_it_on(tiny_model, faces):
    first = tiny_model.first_pass(faces[:1], 60, 20, "female", seed=3)
    cond = tiny_model.identity_embeddings(faces[:1], first)
    sampler = tiny_model.sampler
    weights = {k: v.clone() for k, v in tiny_model.pipe.unet.state_dict().items()}

    def denoise(lora_on):
        with torch.no_grad(), lora_enabled(tiny_model.pipe.unet, lora_on):
            return sampler.run(sampler.encode(first.aged), [0], 0.25, cond, first.pooled_embeds,
                               [torch.Generator().manual_seed(second_pass_seed(3))])

    on, off = denoise(True), denoise(False)
    assert (on - off).abs().max() > 1e-4
    with lora_enabled(tiny_model.pipe.unet, False):  # pass 2 switches the LoRA on by itself
        final = tiny_model.second_pass(first, cond)
        assert not lora_is_enabled(tiny_model.pipe.unet)
    # Pass 2 folds the LoRA into the weights (W + s*B@A in one matmul instead of three): equal to
    # the unfused LoRA up to float32 rounding (observed ~1e-6).
    with torch.no_grad():
        torch.testing.assert_close(final, sampler.decode(on).cpu(), atol=1e-4, rtol=0)
    # ... and gives every base weight back bit for bit.
    after = tiny_model.pipe.unet.state_dict()
    assert weights.keys() == after.keys() and all(torch.equal(weights[k], after[k]) for k in weights)


def test_pass_two_draws_fresh_noise(tiny_model, faces, monkeypatch):
    """Pass 2's posterior sample, start noise and ancestral noise repeat none of pass 1's draws,
    and still follow from the seed alone."""
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler
    import diffusers.utils.torch_utils as torch_utils

    draws = []
    original = torch_utils.randn_tensor

    def recording(*args, **kwargs):
        value = original(*args, **kwargs)
        draws.append(value.clone())
        return value

    monkeypatch.setattr(torch_utils, "randn_tensor", recording)
    monkeypatch.setattr(euler, "randn_tensor", recording)
    first = tiny_model.first_pass(faces[:1], 70, 20, "male", seed=5)  # 0.75: posterior, start, 3 ancestral
    pass_one = list(draws)
    draws.clear()
    cond = tiny_model.identity_embeddings(faces[:1], first)
    final = tiny_model.second_pass(first, cond)
    assert len(pass_one) == 5 and len(draws) == 3  # id_strength 0.25: posterior, start, 1 ancestral
    assert not any(a.shape == b.shape and torch.allclose(a, b) for a in draws for b in pass_one)
    monkeypatch.undo()
    again = tiny_model(faces[:1], 70, 20, "male", seed=5)
    torch.testing.assert_close(again.images, final, atol=0, rtol=0)
    assert second_pass_seed(5) != 5 and second_pass_seed(5) == second_pass_seed(5)


def test_two_pass_result_layout_and_strengths(tiny_model, faces):
    steps = []
    result = tiny_model(faces, [5, 30, 70], [20, 40], ["male", "female"], seed=1,
                        callback=lambda step, total: steps.append((step, total)))
    assert result.images.shape == (6, 3, 128, 128) and result.aged.shape == (6, 3, 128, 128)
    assert result.source_index == [0, 0, 0, 1, 1, 1]
    assert result.target_ages == [5, 30, 70, 5, 30, 70]
    assert result.strengths == [0.5, 0.25, 0.75, 0.75, 0.25, 0.5]
    assert result.genders == ["male"] * 3 + ["female"] * 3
    assert 0 <= result.images.min() and result.images.max() <= 1 and result.images.std() > 0.01
    # Every UNet evaluation reported once, ending at the total.
    assert [s for s, _ in steps] == list(range(1, len(steps) + 1)) and steps[-1][0] == steps[-1][1]


def test_identity_conditioning_shape(tiny_model, faces):
    first = tiny_model.first_pass(faces, [10, 80], 30, "male")
    cond = tiny_model.identity_embeddings(faces, first)
    assert cond.shape == (4, 2, 96)
    plain = tiny_model.identity_embeddings(faces, first, use_swr=False, clip_method="vector")
    assert not torch.allclose(cond, plain)


def test_seed_makes_results_reproducible(tiny_model, faces):
    a = tiny_model(faces[:1], 50, 20, "male", seed=7).images
    b = tiny_model(faces[:1], 50, 20, "male", seed=7).images
    c = tiny_model(faces[:1], 50, 20, "male", seed=8).images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_strength_override(tiny_model, faces):
    result = tiny_model(faces[:1], [25, 80], 20, "male", strength=0.75)
    assert result.strengths == [0.75, 0.75]
    with pytest.raises(ValueError, match="strength override"):
        tiny_model(faces[:1], 25, 20, "male", strength=0.1)


def test_pass_one_equals_the_diffusers_img2img_pipeline(tiny_model, faces):
    """Our sampler draws noise exactly as StableDiffusionXLImg2ImgPipeline does."""
    prompt = "a face image of a 70 years old male"
    first = tiny_model.first_pass(faces[:1], 70, 20, "male", seed=11)
    with lora_enabled(tiny_model.pipe.unet, False):
        reference = tiny_model.pipe(prompt=prompt, image=faces[:1], strength=first.strengths[0],
                                    num_inference_steps=4, guidance_scale=1.0, output_type="pt",
                                    generator=torch.Generator().manual_seed(11)).images
    assert torch.allclose(first.aged, reference.float(), atol=1e-4)


def test_bad_inputs_are_refused_clearly(tiny_model, faces):
    with pytest.raises(ValueError, match="target age must be between 0 and 100"):
        tiny_model(faces[:1], 120, 20, "male")
    with pytest.raises(ValueError, match="source age of face 0"):
        tiny_model(faces[:1], 20, -3, "male")
    with pytest.raises(ValueError, match="gender of face 1"):
        tiny_model(faces, 20, 20, ["male", "alien"])
    with pytest.raises(ValueError, match="2 values for 1 faces"):
        tiny_model(faces[:1], 20, [20, 30], "male")
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        tiny_model(faces[0], 20, 20, "male")
    with pytest.raises(ValueError, match="0..1"):
        tiny_model(faces[:1] * 255, 20, 20, "male")
    with pytest.raises(ValueError, match="NaN"):
        tiny_model(torch.full((1, 3, 128, 128), float("nan")), 20, 20, "male")


def test_non_square_and_other_sizes_are_cropped_and_resized(tiny_model, caplog):
    with caplog.at_level(logging.WARNING, logger="cradle2cane"):
        result = tiny_model(torch.rand(1, 3, 150, 200), 40, 20, "male")
    assert result.images.shape == (1, 3, 128, 128)
    assert "not square" in caplog.text and "resizing" in caplog.text


def test_single_file_base_loads_and_runs(tiny_models, faces):
    model = Cradle2Cane.from_pretrained(tiny_models, base=tiny_models / "sd_xl_turbo_1.0_fp16.safetensors",
                                        device="cpu", dtype=torch.float32)
    folder_unet = Cradle2Cane.from_pretrained(tiny_models, device="cpu").pipe.unet
    # The single file is stored in fp16: weights agree to fp16 precision.
    for (name, a), (_, b) in zip(sorted(model.pipe.unet.state_dict().items()),
                                 sorted(folder_unet.state_dict().items())):
        assert torch.allclose(a.float(), b.float(), atol=2e-3, rtol=2e-3), name
    assert len(model.pipe.tokenizer) > 100 and model.pipe.tokenizer_2.pad_token == "!"
    out = model(faces[:1], 70, 20, "male").images
    assert out.shape == (1, 3, 128, 128) and torch.isfinite(out).all()


def test_missing_files_name_file_folder_and_source(tiny_models, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(tiny_models, broken)
    (broken / "Cradle2Cane" / "clip_project.bin").unlink()
    with pytest.raises(ModelFileError) as info:
        Cradle2Cane.from_pretrained(broken, device="cpu")
    message = str(info.value)
    assert "clip_project.bin" in message and str(broken / "Cradle2Cane") in message
    assert "byliutao/Cradle2Cane" in message
    with pytest.raises(ModelFileError, match="does not exist"):
        Cradle2Cane.from_pretrained(tmp_path / "nowhere", device="cpu")


def test_no_base_found_lists_what_was_expected(tiny_models, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(tiny_models, broken)
    shutil.rmtree(broken / "sdxl-turbo")
    (broken / "sd_xl_turbo_1.0_fp16.safetensors").unlink()
    with pytest.raises(ModelFileError, match="sd_xl_turbo_1.0_fp16.safetensors"):
        Cradle2Cane.from_pretrained(broken, device="cpu")


def test_projector_with_wrong_shapes_is_refused(tiny_models, tmp_path):
    from cradle2cane.method.projectors import ProjectorMLP

    broken = tmp_path / "models"
    shutil.copytree(tiny_models, broken)
    torch.save(ProjectorMLP(784, 64).state_dict(), broken / "Cradle2Cane" / "face_project.bin")
    with pytest.raises(ModelFileError) as info:
        Cradle2Cane.from_pretrained(broken, device="cpu")
    assert "face_project.bin" in str(info.value) and "wrong shapes" in str(info.value)
    assert "784 -> 96" in str(info.value)


def test_unsafe_or_corrupt_pickles_are_refused(tiny_models, tmp_path):
    broken = tmp_path / "models"
    shutil.copytree(tiny_models, broken)
    (broken / "backbone.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(ModelFileError, match="weights-only"):
        Cradle2Cane.from_pretrained(broken, device="cpu")
    import pickle

    class Sneaky:
        def __reduce__(self):
            return (print, ("code ran",))

    (broken / "backbone.pth").write_bytes(pickle.dumps({"conv1.weight": Sneaky()}))
    with pytest.raises(ModelFileError, match="weights-only"):
        Cradle2Cane.from_pretrained(broken, device="cpu")
