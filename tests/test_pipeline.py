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


@pytest.mark.parametrize("stop_at", ["first", "last"])  # in pass 1 (LoRA off), in pass 2 (LoRA folded in)
def test_interrupt_mid_pass_restores_lora(tiny_model, faces, stop_at):
    class Interrupted(Exception):
        pass

    def cancel(step, total):
        if stop_at == "first" or step == total:
            raise Interrupted

    weights = {k: v.clone() for k, v in tiny_model.pipe.unet.state_dict().items()}
    with pytest.raises(Interrupted):
        tiny_model(faces[:1], 70, 20, "male", callback=cancel)
    assert lora_is_enabled(tiny_model.pipe.unet)
    assert all(not layer.disable_adapters for layer in _lora_layers(tiny_model.pipe.unet))
    after = tiny_model.pipe.unet.state_dict()
    assert weights.keys() == after.keys() and all(torch.equal(weights[k], after[k]) for k in weights)


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
    # The one-call path runs the same operations on the same batches: equal up to (absent) rounding.
    torch.testing.assert_close(again.images, final, atol=1e-6, rtol=0)
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


# ----------------------------------------------------------------------------- reference inference


def _pil(image: torch.Tensor):
    """diffusers' tensor -> PIL conversion (numpy_to_pil): round(x * 255) as uint8."""
    import numpy as np
    from PIL import Image

    return Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _from_pil(image) -> torch.Tensor:
    """diffusers/torchvision ToTensor of a PIL image: uint8 / 255 in float32, [1,3,H,W]."""
    import numpy as np

    return torch.from_numpy(np.asarray(image).astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def _script_conditioning(model, source_pil, aged_pil, source_age, target_age):
    """The reference inference script's identity embedding, step by step (one item)."""
    import numpy as np
    from PIL import Image

    from cradle2cane import rotate_clip, svr_arcface
    from cradle2cane.method.clip_features import _features

    s = model.settings
    # ArcFace: torchvision transforms.Resize(112) on a PIL image (PIL bilinear), ToTensor, Normalize(0.5, 0.5).
    hidden = [model.arcface.hidden_state((_from_pil(p.resize((112, 112), Image.BILINEAR)) - 0.5) / 0.5)
              for p in (source_pil, aged_pil)]
    face_feat = svr_arcface(torch.stack(hidden, dim=1), s.swr_alpha, s.swr_beta)
    face_token = model.face_projector(face_feat).unsqueeze(1)
    # CLIP: the fast CLIP processor with do_rescale=False. torchvision's v2 resize of a uint8 image on
    # the CPU is torch's native uint8 antialiased bicubic; no 1/255 rescaling before the normaliser.
    p = model.clip.preprocess
    pixels = torch.from_numpy(np.asarray(source_pil).copy()).permute(2, 0, 1)[None]
    pixels = torch.nn.functional.interpolate(pixels, size=(p.size, p.size), mode="bicubic", antialias=True)
    pixels = (pixels.float() - torch.tensor(p.mean).view(1, 3, 1, 1)) / torch.tensor(p.std).view(1, 3, 1, 1)
    image = _features(model.clip.model.get_image_features(pixel_values=pixels))
    image = image / image.norm(dim=-1, keepdim=True)
    texts = model.clip.text([f"{source_age} years old", f"{target_age} years old"])
    clip_token = model.clip_projector(rotate_clip(image, texts[:1], texts[1:], s.clip_map_model)).unsqueeze(1)
    return torch.cat([face_token, clip_token], dim=1)


def test_reference_inference_reproduces_the_script(tiny_model, faces):
    """The switch reproduces the script's three differences: the aged image round-tripped through
    8 bits, ArcFace input resized by PIL, CLIP fed 0..255 pixels. The script's passes are the
    diffusers img2img pipeline (our sampler equals it up to float rounding, so 8-bit images may
    differ by one level where a value sits on a rounding edge)."""
    import numpy as np

    from cradle2cane.method.prompts import aging_prompt

    source_pil = _pil(faces[0])  # the script reads 8-bit photos
    face = _from_pil(source_pil)
    seed, source, target = 3, 20, 70
    first = tiny_model.first_pass(face, target, source, "male", seed=seed, reference_inference=True)
    assert torch.equal(first.aged * 255, (first.aged * 255).round())  # (c) 8-bit values
    pipe = tiny_model.pipe
    with torch.no_grad(), lora_enabled(pipe.unet, False):
        script_aged = pipe(prompt=aging_prompt(target, "male"), image=source_pil, strength=first.strengths[0],
                           num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(seed)
                           ).images[0]
    assert np.abs(np.asarray(script_aged).astype(int) - np.asarray(_pil(first.aged[0])).astype(int)).max() <= 1

    aged_pil = _pil(first.aged[0])
    with torch.no_grad():
        script_cond = _script_conditioning(tiny_model, source_pil, aged_pil, source, target)
    cond = tiny_model.identity_embeddings(face, first)
    torch.testing.assert_close(cond, script_cond, atol=1e-5, rtol=0)  # same float32 ops, batched differently
    default = tiny_model.identity_embeddings(face, tiny_model.first_pass(face, target, source, "male", seed=seed))
    assert (default - cond).abs().max() > 1e-3  # the switch changes the conditioning

    final = tiny_model.second_pass(first, cond)
    assert torch.equal(final * 255, (final * 255).round())  # the final image is 8-bit too (PIL out)
    with torch.no_grad(), lora_enabled(pipe.unet, True):
        script_final = pipe(prompt_embeds=script_cond, pooled_prompt_embeds=first.pooled_embeds, image=aged_pil,
                            strength=tiny_model.settings.id_strength, num_inference_steps=4, guidance_scale=1.0,
                            generator=torch.Generator().manual_seed(second_pass_seed(seed))).images[0]
    difference = np.abs(np.asarray(script_final).astype(int) - np.asarray(_pil(final[0])).astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    whole = tiny_model(face, target, source, "male", seed=seed, reference_inference=True)
    assert torch.equal(whole.images, final) and torch.equal(whole.aged, first.aged)


# ----------------------------------------------------------------------------- threads and bad numbers


def test_threads_sharing_one_model_get_their_single_threaded_results(tiny_model, faces):
    """Runs take turns on one instance: each thread's images equal the single-threaded call
    exactly (the LoRA switch and its folding are shared state)."""
    import threading

    jobs = [((faces[:1], [10, 70], 30, "male"), {"seed": 1}),
            ((faces[1:], [50], 40, "female"), {"seed": 2, "batch_size": 1}),
            ((faces, [5, 80], [20, 60], ["male", "female"]), {"seed": 3}),
            ((faces[:1], 45, 45, "female"), {"seed": 4, "reference_inference": True})]
    expected = [tiny_model(*args, **kwargs).images for args, kwargs in jobs]
    results: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(jobs))}
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs) + 1)

    def work(i):
        try:
            start.wait()
            for _ in range(2):
                args, kwargs = jobs[i]
                results[i].append(tiny_model(*args, **kwargs).images)
        except BaseException as exc:  # reported below; a thread cannot fail the test itself
            errors.append(exc)

    def passes_one_by_one():  # the node path: the three public steps, interleaved with the others
        try:
            start.wait()
            first = tiny_model.first_pass(faces[1:], [30, 60], 25, "male", seed=9)
            cond = tiny_model.identity_embeddings(faces[1:], first)
            results[-1] = [tiny_model.second_pass(first, cond)]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    threads.append(threading.Thread(target=passes_one_by_one))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    for i, images in enumerate(expected):
        assert len(results[i]) == 2 and all(torch.equal(r, images) for r in results[i]), f"job {i}"
    assert torch.equal(results[-1][0], tiny_model(faces[1:], [30, 60], 25, "male", seed=9).images)
    assert lora_is_enabled(tiny_model.pipe.unet)


@pytest.fixture
def own_model(tiny_models):
    """A model this test may break (the shared one must stay intact)."""
    return Cradle2Cane.from_pretrained(tiny_models, device="cpu", dtype=torch.float32)


def test_non_finite_results_raise_naming_the_stage(own_model, faces):
    from cradle2cane.pipeline import NonFiniteResultError

    unet = own_model.pipe.unet
    lora_b = next(p for n, p in unet.named_parameters() if "lora_B" in n)
    weights = {k: v.clone() for k, v in unet.state_dict().items() if "lora" not in k}
    with torch.no_grad():
        lora_b.fill_(float("nan"))
    with pytest.raises(NonFiniteResultError, match=r"pass 2 \(identity\).*NaN or infinite.*LoRA"):
        own_model(faces[:1], 70, 20, "male")
    # The failed pass gave every base weight back and left the LoRA switched on.
    after = unet.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights) and lora_is_enabled(unet)
    with torch.no_grad():
        lora_b.zero_()
        own_model.face_projector.fc_out.weight.fill_(float("inf"))
    with pytest.raises(NonFiniteResultError, match="identity embedding"):
        own_model(faces[:1], 70, 20, "male")


def test_training_api_carries_gradients_to_the_projectors(tiny_model, faces):
    """The public parts training uses (``IdentityEncoder``, a sampler over any UNet callable) are
    the facade's computation with gradients: the facade's own result carries none."""
    import copy

    from cradle2cane.method.conditioning import IdentityEncoder
    from cradle2cane.method.sampler import Img2ImgSampler

    m = tiny_model
    first = m.first_pass(faces[:1], 70, 20, "male", seed=2)
    inference = m.identity_embeddings(faces[:1], first)
    assert not inference.requires_grad
    face_projector = copy.deepcopy(m.face_projector).requires_grad_(True)
    encoder = IdentityEncoder(m.arcface, face_projector, m.clip, m.clip_projector, m.settings, feature_dtype=m.dtype)
    conditioning = encoder(faces[:1], first.aged, [0], [20], [70])
    torch.testing.assert_close(conditioning, inference, atol=0, rtol=0)  # the same code, the same numbers

    calls = []

    def wrapped_unet(*args, **kwargs):  # stands for a DDP- or compile-wrapped UNet
        calls.append(args[0].shape[0])
        return m.pipe.unet(*args, **kwargs)

    pipe = m.pipe
    sampler = Img2ImgSampler(wrapped_unet, pipe.vae, pipe.scheduler.config, pipe.vae_scale_factor, steps=4)
    with lora_enabled(pipe.unet, False):
        latents = sampler.run(sampler.encode(first.aged), [0], 0.25, conditioning, first.pooled_embeds,
                              [torch.Generator().manual_seed(0)])
    sampler.decode(latents).mean().backward()
    assert calls == [1] and all(p.grad is not None and p.grad.abs().sum() > 0
                                for p in face_projector.parameters() if p.ndim == 2)


@pytest.mark.parametrize("override", [{"swr_alpha": 5.0}, {"swr_beta": 0.0}, {"swr_alpha": float("inf")}])
def test_identity_overrides_are_range_checked_before_any_work(tiny_model, faces, override):
    """Per-call SVR overrides obey the same bounds as hparams.yml (one table), before any model runs."""
    first = tiny_model.first_pass(faces[:1], 60, 30, "male")
    key = next(iter(override))
    with pytest.raises(ValueError, match=f"identity embeddings: {key} must be"):
        tiny_model.identity_embeddings(faces[:1], first, **override)
