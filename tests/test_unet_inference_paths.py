"""The U-Net's inference-only fast paths (attention chunking, work reused across denoising steps, in-place
rotary) against the original's outputs and against the plain paths they replace."""

import pytest
import torch

from extdm_diffusers.models.distribution_adaptor import DistributionExtrapolator
from extdm_diffusers.models.unet_blocks import ATTENTION_CHUNK_BYTES, ChannelLayerNorm, RotaryEmbedding, attention_chunk_size
from reference_cases import relative_error
from test_unet import CASES, TOLERANCE, build, call


@pytest.mark.parametrize("case", CASES)
def test_chunked_attention_matches_the_original(case):
    """Chunks of 40 tokens: the window attention (32-token windows) runs one window per chunk and the temporal
    attention (7 or 6 frames) several sequences per chunk, with the shift mask sliced per chunk."""
    _, t, _, model = build(case)
    with torch.no_grad():
        model.set_attention_chunking(None)
        whole = call(model, t).sample
        model.set_attention_chunking(40)
        chunked = call(model, t).sample
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    assert relative_error(chunked, t["outputs.sample"]) < TOLERANCE


def test_chunked_attention_gives_the_same_gradients():
    _, t, _, model = build("unet_wo_ref")
    grads = []
    for chunking in (None, 40):
        model.zero_grad()
        model.set_attention_chunking(chunking)
        call(model, t).sample.square().mean().backward()
        grads.append(model.down_blocks[0].window_attention1.to_qkv.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_attention_chunk_size_on_each_device():
    x = torch.zeros(1)
    tokens = ATTENTION_CHUNK_BYTES // (3 * 256 * 4)  # q/k/v of 256 features each, float32
    assert tokens == 4096
    assert attention_chunk_size(640, 32, 256, x, "auto") == tokens // 32
    assert attention_chunk_size(640, 32, 256, x.double(), "auto") == tokens // 2 // 32
    assert attention_chunk_size(8, 32, 256, x, "auto") == 8  # fewer sequences than a chunk holds
    assert attention_chunk_size(640, 32, 256, torch.zeros(1, device="meta"), "auto") == 640  # not the CPU
    assert attention_chunk_size(640, 32, 256, x, None) == 640
    assert attention_chunk_size(640, 32, 256, x, 100) == 3
    assert attention_chunk_size(640, 32, 256, x, 10) == 1  # whole sequences, at least one


@pytest.mark.parametrize("bad", [0, -5, "fast", 2.5, True])
def test_set_attention_chunking_rejects_bad_values(bad):
    model = build("unet_wo_ref")[3]
    with pytest.raises(ValueError, match="`max_tokens` must be a positive int, 'auto' or None"):
        model.set_attention_chunking(bad)


def holds_no_cache(model) -> bool:
    """No tensors kept on the model beyond its parameters and buffers (e.g. a result of an earlier call)."""
    registered = {id(t) for t in (*model.parameters(), *model.buffers())}
    for module in model.modules():
        for value in vars(module).values():
            values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, torch.Tensor) and id(v) not in registered for v in values):
                return False
    return True


def test_trajectory_model_condition_follows_its_inputs():
    """BAIR's conv_in over the observed frames (their embedded motion and features) is part of the prepared
    condition: prepared from modified inputs it gives what a fresh model gives for them; a step with
    autograd and no condition computes it with gradients; the model keeps nothing between calls."""
    _, t, _, model = build("unet_traj_u12")
    cond = {"cond_motion": t["inputs.cond_frames"].clone(), "cond_features": t["inputs.cond_fea"].clone()}
    with torch.no_grad():
        condition = model.prepare_condition(**cond)
        first = call(model, t, **cond, condition=condition).sample
        again = call(model, t, **cond, sample=t["inputs.x"] * 0.5, condition=condition).sample
        cond["cond_features"].mul_(1.5)
        modified = call(model, t, **cond, condition=model.prepare_condition(**cond)).sample
        fresh = build("unet_traj_u12")[3]
        expected_again = call(fresh, t, sample=t["inputs.x"] * 0.5).sample
        expected_modified = call(fresh, t, cond_features=t["inputs.cond_fea"] * 1.5).sample
    assert relative_error(first, t["outputs.sample"]) < TOLERANCE
    torch.testing.assert_close(again, expected_again, rtol=0, atol=1e-6)
    torch.testing.assert_close(modified, expected_modified, rtol=0, atol=1e-6)
    assert holds_no_cache(model)
    call(model, t, **cond).sample.mean().backward()  # training: everything computed, gradients reach conv_in
    assert model.conv_in.weight.grad.abs().sum() > 0
    assert model.down_blocks[0].window_attention1.relative_position_bias_table.grad.abs().sum() > 0


@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_layer_norm_is_the_original_formula(channels_last):
    norm = ChannelLayerNorm(12)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 12))
    x = torch.randn(2, 12, 3, 5, 6) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
    expected = (x - mean) / (var + norm.eps).sqrt() * norm.weight.view(1, -1, 1, 1, 1)
    out = norm(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_extrapolator_normalises_with_the_unbiased_variance_as_the_original():
    """The original's calc_mean_std: feat.var(dim=2) (unbiased) + eps, then sqrt."""
    extrapolator = DistributionExtrapolator(4, num_layers=1, zero_init=False)
    observed = torch.randn(2, 4, 3, 5, 5) * 2 + 0.5
    with torch.no_grad():
        x = observed + extrapolator.predictor(extrapolator.predictor_norm(observed))
        flat = x.flatten(2)
        mean = flat.mean(2)[:, :, None, None, None]
        std = (flat.var(2) + extrapolator.eps).sqrt()[:, :, None, None, None]
        normalised = (x - mean) / std
        expected = (normalised + extrapolator.extrapolators[0](normalised)) * std + mean
        out = extrapolator(observed)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rotary_dim", [32, 16])
def test_rotary_in_place_equals_the_rotated_copy(dtype, rotary_dim):
    rotary = RotaryEmbedding(rotary_dim)
    qkv = torch.randn(6, 32, 3, 4, 32).to(dtype)
    expected = rotary.rotate(qkv[:, :, :2], seq_dim=-4)
    v = qkv[:, :, 2].clone()
    out = rotary.rotate(qkv[:, :, :2], seq_dim=-4, inplace=True)
    assert out.data_ptr() == qkv.data_ptr()  # a view of the projection, overwritten
    torch.testing.assert_close(qkv[:, :, :2], expected, rtol=0, atol=0)
    assert torch.equal(qkv[:, :, 2], v)  # v untouched
    # and it is the rotation: the first pair of position 1 turns by angles[1, 0]
    angles = rotary.angles(2, "cpu")
    x = torch.zeros(1, 2, 1, 1, rotary_dim, dtype=torch.float32)
    x[0, 1, 0, 0, 0] = 1.0
    turned = rotary.rotate(x, seq_dim=-4, inplace=True)[0, 1, 0, 0, :2]
    torch.testing.assert_close(turned, torch.stack([angles[1, 0].cos(), angles[1, 0].sin()]))


@pytest.mark.parametrize("case", ["unet_traj_u12", "unet_traj_ada"])
def test_inference_mode_gives_the_same_noise(case):
    """Under torch.inference_mode the prepared condition works as under no_grad, and nothing stays on the model."""
    _, t, _, model = build(case)
    with torch.no_grad():
        expected = call(model, t, condition=model.prepare_condition(t["inputs.cond_frames"], t["inputs.cond_fea"])).sample
    with torch.inference_mode():
        cond = {"cond_motion": t["inputs.cond_frames"].clone(), "cond_features": t["inputs.cond_fea"].clone()}
        first = call(model, t, **cond, condition=model.prepare_condition(**cond)).sample
        cond["cond_features"].mul_(1.5)
        changed = call(model, t, **cond, condition=model.prepare_condition(**cond)).sample
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    assert not torch.allclose(changed, first)
    assert holds_no_cache(model)


def test_pipeline_under_inference_mode_predicts_the_same_frames(reference_pipeline_factory):
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    video, noise = t["inputs.video"].permute(0, 2, 1, 3, 4), t["inputs.initial_noise"]
    expected = pipe(video, eta=0.0, latents=noise, output_type="pt").frames
    with torch.inference_mode():
        frames = pipe(video, eta=0.0, latents=noise, output_type="pt").frames
    torch.testing.assert_close(frames, expected, rtol=0, atol=1e-6)
