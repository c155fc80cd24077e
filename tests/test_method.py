"""The method's pure functions against values worked out by hand (docs/method.md)."""

import math

import pytest
import torch

from cradle2cane import adani_strength, rotate_clip, slerp, svr_arcface
from cradle2cane.method.arcface import IResNet, arcface_hidden_state, iresnet_from_state_dict, network_name
from cradle2cane.method.prompts import aging_prompt, check_age, check_gender
from cradle2cane.method.adani import check_strength, unet_evaluations
from cradle2cane.method.projectors import ProjectorMLP, expected_shapes, geo_widths


@pytest.mark.parametrize("gap, expected", [(0, 0.25), (10, 0.25), (-10, 0.25), (10.5, 0.5), (30, 0.5),
                                           (31, 0.75), (80, 0.75)])
def test_adani_strength_two_thresholds(gap, expected):
    assert adani_strength(gap, 10, 30) == expected


def test_adani_strength_sample_yaml_thresholds_and_one_threshold_variant():
    assert adani_strength(6, 5, 30) == 0.5
    assert adani_strength(5, 5, 30) == 0.25
    assert adani_strength(70, 10, 30, one_threshold=True) == 0.5
    assert adani_strength(3, 10, 30, one_threshold=True) == 0.25


def test_strength_maps_to_unet_evaluations_as_in_diffusers():
    assert [unet_evaluations(s, 4) for s in (0.25, 0.5, 0.75, 1.0)] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="runs no denoising step"):
        check_strength(0.2, 4)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        check_strength(1.5, 4)


def test_prompt_text_is_exact():
    assert aging_prompt(70, "female") == "a face image of a 70 years old female"


def test_age_and_gender_validation():
    assert check_age(0, "age") == 0 and check_age(100, "age") == 100
    for bad in (-1, 101, 3.5, "20", True):
        with pytest.raises(ValueError, match="age"):
            check_age(bad, "target age")
    assert check_gender(" Female ") == "female" and check_gender("m") == "male"
    with pytest.raises(ValueError, match="'male' or 'female'"):
        check_gender("robot")


def test_svr_arcface_on_a_diagonal_matrix():
    # Rows [3, 0] and [0, 4]: M = X^T is diagonal, so U and V are (signed) permutations and the
    # rebuilt input row is [3 * exp(3a) * b, 0].
    alpha, beta = 0.01, 1.1
    x = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    out = svr_arcface(x, alpha, beta)
    assert torch.allclose(out, torch.tensor([3 * math.exp(3 * alpha) * beta, 0.0]), atol=1e-5)


def test_svr_arcface_identity_weights_and_batching():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 50, generator=gen)
    assert torch.allclose(svr_arcface(x, 0.0, 1.0), x[:, 0], atol=1e-5)
    batched = svr_arcface(x, 0.01, 1.1)
    single = torch.stack([svr_arcface(x[i], 0.01, 1.1) for i in range(3)])
    assert batched.shape == (3, 50) and torch.allclose(batched, single, atol=1e-5)
    assert svr_arcface(x.half(), 0.01, 1.1).dtype == torch.float32
    with pytest.raises(ValueError, match="hidden states"):
        svr_arcface(torch.randn(5), 0.01, 1.1)


def test_rotate_clip_vector_and_angle_by_hand():
    image, source, target = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])
    vector = rotate_clip(image, source, target, "vector")
    assert torch.allclose(vector, torch.tensor([2.0, -1.0]) / math.sqrt(5), atol=1e-6)
    mid = torch.tensor([1.0, 1.0]) / math.sqrt(2)  # slerp halfway between orthogonal unit vectors
    expected = image + (mid - source)
    angle = rotate_clip(image, source, target, "angle")
    assert torch.allclose(angle, expected / expected.norm(), atol=1e-6)
    # Unnormalised inputs are normalised first.
    assert torch.allclose(rotate_clip(image * 3, source * 2, target * 5, "angle"), angle, atol=1e-6)


def test_rotate_clip_same_age_leaves_image_unchanged():
    gen = torch.Generator().manual_seed(1)
    image, text = torch.randn(4, 16, generator=gen), torch.randn(4, 16, generator=gen)
    out = rotate_clip(image, text, text.clone(), "angle")
    assert torch.allclose(out, image / image.norm(dim=-1, keepdim=True), atol=1e-6)
    with pytest.raises(ValueError, match="angle"):
        rotate_clip(image, text, text, "spin")


def test_slerp_endpoints_midpoint_and_parallel():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(slerp(0.0, a, b), a) and torch.allclose(slerp(1.0, a, b), b, atol=1e-6)
    assert torch.allclose(slerp(0.5, a, b), torch.tensor([1.0, 1.0]) / math.sqrt(2), atol=1e-6)
    assert torch.allclose(slerp(0.5, a, a), a)


def test_projector_widths_and_released_key_names():
    assert geo_widths(25088, 2048) == [12544, 6272, 3136, 2048]
    assert geo_widths(768, 2048) == [2048, 2048, 2048, 2048]
    shapes = expected_shapes(25088, 2048)
    assert shapes["layers.0.weight"] == (12544, 25088)
    assert shapes["layers.12.weight"] == (2048, 3136) and shapes["fc_out.weight"] == (2048, 2048)
    linear_and_norm = {0, 1, 4, 5, 8, 9, 12, 13}
    assert {int(k.split(".")[1]) for k in shapes if k.startswith("layers.")} == linear_and_norm
    assert "layers.1.num_batches_tracked" in shapes and "layers.1.running_var" in shapes
    assert len(shapes) == 4 * 7 + 2


def test_projector_forward_shape_in_eval():
    proj = ProjectorMLP(32, 16).eval()
    assert proj(torch.randn(3, 32)).shape == (3, 16)


def test_iresnet_built_from_state_dict_and_hidden_state():
    torch.manual_seed(0)
    net = IResNet((2, 2, 2, 2), widths=(4, 8, 8, 16), num_features=8).eval()
    rebuilt = iresnet_from_state_dict(net.state_dict()).eval()
    assert network_name(rebuilt) == "r18" and rebuilt.hidden_dim == 16 * 49
    images = torch.rand(2, 3, 128, 128)
    hidden = arcface_hidden_state(rebuilt, images)
    assert hidden.shape == (2, 784)
    assert torch.allclose(hidden, arcface_hidden_state(net, images))
    # The hidden state is taken before fc/features, after bn2.
    x = torch.nn.functional.interpolate(images, size=(112, 112), mode="bilinear", align_corners=False)
    assert torch.allclose(net.hidden_state((x - 0.5) / 0.5), hidden)
    with pytest.raises(KeyError, match="iResNet"):
        iresnet_from_state_dict({"conv1.weight": torch.zeros(1)})


def test_plan_lays_out_items_face_by_face_and_validates_once():
    from cradle2cane import Settings
    from cradle2cane.method.plan import make_plan, second_pass_seed

    plan = make_plan(2, [5, 70], [20, 40], ["m", "female"], Settings(), seed=[3, 2**64 - 1])
    assert len(plan) == 4 and plan.faces == 2
    assert plan.source_index == [0, 0, 1, 1] and plan.target_ages == [5, 70, 5, 70]
    assert plan.genders == ["male", "male", "female", "female"] and plan.seeds == [3, 3, 2**64 - 1, 2**64 - 1]
    assert plan.strengths == [0.5, 0.75, 0.75, 0.5] and plan.id_strength == 0.25
    assert make_plan(1, 70, 20, "male", Settings(), strength=0.5).strengths == [0.5]
    for kwargs, match in [({"seed": -1}, "seed of face 0"), ({"seed": 2**64}, "0..2\\*\\*64-1"),
                          ({"seed": 1.5}, "whole number"), ({"id_strength": 0.1}, "id_strength"),
                          ({"target_ages": []}, "at least one target age"), ({"source_ages": [1, 2]}, "2 values")]:
        request = {"target_ages": 70, "source_ages": 20, "seed": 0, **kwargs}
        with pytest.raises(ValueError, match=match):
            make_plan(1, request.pop("target_ages"), request.pop("source_ages"), "male", Settings(), **request)
    # Pass 2's seed: 64-bit, fixed by the seed, different from it (fresh noise).
    assert all(0 <= second_pass_seed(s) < 2**64 and second_pass_seed(s) != s for s in (0, 1, 2**64 - 1))
    assert second_pass_seed(7) == second_pass_seed(7) != second_pass_seed(8)
