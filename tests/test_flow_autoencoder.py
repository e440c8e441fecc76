import pytest
import torch

from extdm_diffusers import FlowAutoencoder
from extdm_diffusers.models import compose_motion
from extdm_diffusers.conversion import CheckpointConversionError, flow_autoencoder_from_original
from reference_cases import load_case, relative_error, split_autoencoder

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    meta, tensors, state_dict = load_case("ae_affine_32")
    model = flow_autoencoder_from_original(split_autoencoder(state_dict), meta["config"])
    return meta, tensors, state_dict, model


def test_forward_matches_original(reference):
    _, t, _, model = reference
    with torch.no_grad():
        out = model(t["inputs.source"], t["inputs.driving"])
    checks = {
        "generator.prediction": out.prediction,
        "generator.deformed": out.deformed,
        "generator.optical_flow": out.optical_flow.permute(0, 2, 3, 1),  # ours is channels first
        "generator.occlusion_map": out.occlusion_map,
        "generator.bottle_neck_feat": out.features,
        "forward_bottle": out.features,
        "bg_params": out.background_params,
    }
    for side, params in (("source_region", out.source_region_params), ("driving_region", out.driving_region_params)):
        for key in ("shift", "covar", "affine", "heatmap"):
            checks[f"{side}.{key}"] = params[key]
    for name, ours in checks.items():
        assert ours.shape == t[f"outputs.{name}"].shape, name
        assert relative_error(ours, t[f"outputs.{name}"]) < TOLERANCE, name
    assert out.optical_flow.shape == (2, 2, 16, 16)


def test_decode_matches_original_forward_with_flow(reference):
    _, t, _, model = reference
    with torch.no_grad():
        out = model.decode(t["inputs.source"], t["inputs.flow"].permute(0, 3, 1, 2), t["inputs.occlusion"])
    assert relative_error(out.sample, t["outputs.with_flow.prediction"]) < TOLERANCE
    assert relative_error(out.deformed, t["outputs.with_flow.deformed"]) < TOLERANCE


def test_encode_and_decode_are_batched_over_time(reference):
    _, t, _, model = reference
    source, driving = t["inputs.source"], t["inputs.driving"]
    frames = torch.stack([driving, source, driving.flip(-1)], dim=1)  # (B, T=3, C, H, W)
    with torch.no_grad():
        encoded = model.encode(frames, source)
        per_frame = [model(source, frames[:, i]) for i in range(3)]
        assert encoded.optical_flow.shape == (2, 3, 2, 16, 16)
        assert encoded.occlusion_map.shape == (2, 3, 1, 16, 16)
        assert encoded.features.shape == (2, 3, 32, 8, 8)
        for i, single in enumerate(per_frame):
            torch.testing.assert_close(encoded.optical_flow[:, i], single.optical_flow, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(encoded.occlusion_map[:, i], single.occlusion_map, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(encoded.features[:, 1], per_frame[0].features, rtol=1e-5, atol=1e-6)
        # features of the first frames only (a training clip's observed ones), the motion of all of them
        leading = model.encode(frames, source, feature_frames=2)
        assert leading.features.shape == (2, 2, 32, 8, 8)
        torch.testing.assert_close(leading.features, encoded.features[:, :2], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(leading.optical_flow, encoded.optical_flow, rtol=0, atol=0)

        decoded = model.decode(source, encoded.optical_flow, encoded.occlusion_map)
        assert decoded.sample.shape == frames.shape
        for i, single in enumerate(per_frame):
            torch.testing.assert_close(decoded.sample[:, i], single.prediction, rtol=1e-5, atol=1e-6)


def test_save_and_load_round_trip(reference, tmp_path):
    _, t, _, model = reference
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = FlowAutoencoder.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        a = model(t["inputs.source"], t["inputs.driving"]).prediction
        b = loaded(t["inputs.source"], t["inputs.driving"]).prediction
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # oneDNN picks kernels by the weights' alignment


def test_bfloat16_runs(reference):
    _, t, _, model = reference
    half = FlowAutoencoder.from_config(model.config).eval()
    half.load_state_dict(model.state_dict())
    half = half.to(torch.bfloat16)
    with torch.no_grad():
        out = half(t["inputs.source"].bfloat16(), t["inputs.driving"].bfloat16())
    assert out.prediction.dtype == torch.bfloat16
    assert relative_error(out.prediction, t["outputs.generator.prediction"]) < 5e-2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, s: m(s[:, :1], s), r"`source` must have shape \(B, C, H, W\) with C=3"),
        (lambda m, s: m(s, s[:1]), r"batch size of `source`, `driving` must match"),
        (lambda m, s: m.encode(s, s), r"`frames` must have shape \(B, T, C, H, W\)"),
        (lambda m, s: m.encode(s[None], s), r"batch size of `frames`, `reference` must match"),
        (lambda m, s: m.encode(s[:, None], s, feature_frames=2), r"`feature_frames` must be an int in \[1, 1\]"),
        (lambda m, s: m.decode(s, torch.zeros(2, 3, 16, 16), torch.zeros(2, 1, 16, 16)), r"`optical_flow` must have shape"),
        (lambda m, s: m.decode(s, torch.zeros(2, 2, 16, 16), torch.zeros(2, 1, 8, 8)), r"`occlusion_map` must have shape \(2, 1, 16, 16\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(reference, call, message):
    _, t, _, model = reference
    with pytest.raises(ValueError, match=message):
        call(model, t["inputs.source"])


def test_conversion_names_bad_keys(reference):
    meta, _, state_dict, _ = reference
    checkpoint = split_autoencoder(state_dict)
    checkpoint["generator"]["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointConversionError, match=r"unknown keys \[generator.extra.weight\]"):
        flow_autoencoder_from_original(checkpoint, meta["config"])

    checkpoint = split_autoencoder(state_dict)
    del checkpoint["region_predictor"]["regions.bias"]
    with pytest.raises(CheckpointConversionError, match=r"missing keys \[region_predictor.regions.bias\]"):
        flow_autoencoder_from_original(checkpoint, meta["config"])

    checkpoint = split_autoencoder(state_dict)
    checkpoint["bg_predictor"]["fc.bias"] = torch.zeros(8)
    with pytest.raises(CheckpointConversionError, match=r"mis-shaped keys \[bg_predictor.fc.bias: checkpoint \(8,\) vs model \(6,\)\]"):
        flow_autoencoder_from_original(checkpoint, meta["config"])

    with pytest.raises(CheckpointConversionError, match=r"lacks \['bg_predictor'\]"):
        flow_autoencoder_from_original({k: v for k, v in split_autoencoder(state_dict).items() if k != "bg_predictor"}, meta["config"])


@pytest.mark.parametrize("bg_type", ["zero", "shift", "perspective"])
def test_other_background_types_and_regression_affine(bg_type):
    model = FlowAutoencoder(
        num_regions=3,
        bg_predictor_params={"block_expansion": 4, "max_features": 16, "num_blocks": 2, "bg_type": bg_type},
        region_predictor_params={"block_expansion": 4, "max_features": 16, "num_blocks": 2, "pca_based": False},
        generator_params={"block_expansion": 8, "max_features": 16, "num_bottleneck_blocks": 1,
                          "pixelwise_flow_predictor_params": {"block_expansion": 4, "max_features": 16, "num_blocks": 2}},
    ).eval()
    source, driving = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(source, driving)
    assert out.prediction.shape == (2, 3, 32, 32)
    assert out.background_params.shape == (2, 3, 3)
    # freshly initialised predictors start from the identity transform
    torch.testing.assert_close(out.background_params, torch.eye(3).expand(2, 3, 3))
    torch.testing.assert_close(out.driving_region_params.affine, torch.eye(2).expand(2, 3, 2, 2))


def _pixel_centre_grid(h: int, w: int, shift=(0.0, 0.0)) -> torch.Tensor:
    """(2, h, w) the grid that ``grid_sample`` (align_corners=False) reads pixel centres with, moved by ``shift``
    pixels (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([(2 * (xs + shift[0]) + 1) / w - 1, (2 * (ys + shift[1]) + 1) / h - 1])


def test_compose_motion_chains_two_warps():
    """Translations add; sampling the outer flow at pixel centres returns it; occlusions multiply; and decoding
    the composition warps as warping twice does (plain warps, integer shifts: no interpolation)."""
    h = w = 8
    outer = _pixel_centre_grid(h, w, (1, 0))[None]  # frame B samples A one pixel to the right
    inner = torch.stack([_pixel_centre_grid(h, w, (0, 2)), _pixel_centre_grid(h, w)])[None]  # (1, 2, 2, h, w)
    outer_occlusion = torch.rand(1, 1, h, w, dtype=torch.float64)
    inner_occlusion = torch.rand(1, 2, 1, h, w, dtype=torch.float64)
    flow, occlusion = compose_motion(outer, outer_occlusion, inner, inner_occlusion)
    assert flow.shape == (1, 2, 2, h, w) and occlusion.shape == (1, 2, 1, h, w)
    interior = (slice(None), slice(None), slice(None), slice(0, h - 2), slice(0, w - 1))
    torch.testing.assert_close(flow[interior], torch.stack([_pixel_centre_grid(h, w, (1, 2)), _pixel_centre_grid(h, w, (1, 0))])[None][interior])
    torch.testing.assert_close(flow[:, 1], outer)  # an identity inner warp keeps the outer one
    torch.testing.assert_close(occlusion[:, 1], outer_occlusion * inner_occlusion[:, 1])
    torch.testing.assert_close(occlusion[:, 0, :, : h - 2], outer_occlusion[:, :, 2:] * inner_occlusion[:, 0, :, : h - 2])
    image = torch.rand(1, 1, h, w, dtype=torch.float64)

    def warp(frame, grid):
        return torch.nn.functional.grid_sample(frame, grid.permute(0, 2, 3, 1), align_corners=False)

    twice = warp(warp(image, outer), inner[:, 0])
    torch.testing.assert_close(warp(image, flow[:, 0])[..., : h - 2, : w - 1], twice[..., : h - 2, : w - 1])
    no_occlusion = compose_motion(outer, None, inner, None)
    assert no_occlusion[1] is None and torch.equal(no_occlusion[0], flow)
    with pytest.raises(ValueError, match=r"`outer_flow` must have shape \(B, 2, h, w\) and `inner_flow` \(B, T, 2, h, w\)"):
        compose_motion(outer, None, inner[:, 0], None)


def _region_fields(params):
    return {k: v for k, v in params.items() if v is not None}


@pytest.mark.parametrize("sync_like_norms", [False, True])
def test_regions_of_several_batches_in_one_pass_are_those_of_separate_calls(reference, sync_like_norms):
    """Train mode: each batch normalised by its own statistics, the running ones updated batch after batch, the
    gradients the same. Norms that cannot split a batch (a plain nn.BatchNorm2d here, as SyncBatchNorm) fall back
    to separate calls."""
    import copy

    from extdm_diffusers.models.autoencoder_blocks import normalises_per_call

    _, t, _, model = reference
    batched, separate = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    if sync_like_norms:
        block = batched.region_predictor.predictor.encoder.down_blocks[0]
        plain = torch.nn.BatchNorm2d(block.norm.num_features)
        plain.load_state_dict(block.norm.state_dict())
        block.norm = plain
        assert not normalises_per_call(batched.region_predictor)
    images = (t["inputs.source"], t["inputs.driving"], t["inputs.driving"].flip(-1))
    calls = []
    batched.region_predictor.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    ours = batched.predict_regions(*images)
    theirs = [separate.region_predictor(image) for image in images]
    assert calls == ([2, 2, 2] if sync_like_norms else [6])
    for one, other in zip(ours, theirs):
        for key, value in _region_fields(other).items():
            # the same sums on this CPU (bit for bit, AVX-512 EPYC); the bound leaves room for kernels whose
            # blocking depends on the batch, far below what joint statistics would change (tenths)
            torch.testing.assert_close(one[key], value, rtol=1e-5, atol=1e-6)
    for (name, buffer), other in zip(batched.region_predictor.named_buffers(), separate.region_predictor.buffers()):
        torch.testing.assert_close(buffer, other, rtol=1e-5, atol=1e-6, msg=name)
    sum(p.shift.sum() + p.affine.square().sum() for p in ours).backward()
    sum(p.shift.sum() + p.affine.square().sum() for p in theirs).backward()
    # weight gradients sum over 6 images at once instead of 3 x 2: 3e-6 of the largest gradient measured (the conv
    # biases before a norm get zero in exact arithmetic, so only rounding); joint statistics would change them by O(1)
    scale = max(q.grad.abs().max() for q in separate.region_predictor.parameters())
    for (name, p), q in zip(batched.region_predictor.named_parameters(), separate.region_predictor.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=2e-5 * float(scale), msg=name)


def test_forward_takes_region_params_predicted_beforehand(reference):
    _, t, _, model = reference
    source, driving = t["inputs.source"], t["inputs.driving"]
    with torch.no_grad():
        regions = model.predict_regions(source, driving)
        given, predicted = model(source, driving, region_params=regions), model(source, driving)
    torch.testing.assert_close(given.prediction, predicted.prediction, rtol=0, atol=0)
    with pytest.raises(TypeError, match="region_params"):
        model(source, driving, region_params=regions[:1])
    with pytest.raises(ValueError, match=r"shape of `images\[0\]`, `images\[1\]`"):
        model.predict_regions(source, driving[:1])
    with pytest.raises(ValueError, match="images"):
        model.predict_regions()
