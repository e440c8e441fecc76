import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from extdm_diffusers import ExtDMUNet3DModel
from extdm_diffusers.conversion import CheckpointConversionError, unet_config_from_original, unet_from_original
from reference_cases import load_case, relative_error

CASES = ["unet_wo_ref", "unet_traj_u12", "unet_traj_ada", "unet_traj_ada_u22"]
TOLERANCE = 1e-4


def build(case):
    meta, tensors, state_dict = load_case(case)
    model = unet_from_original(state_dict, meta["original_module"], **meta["constructor"])
    return meta, tensors, state_dict, model


def call(model, t, **overrides):
    inputs = dict(sample=t["inputs.x"], timestep=t["inputs.timestep"], cond_motion=t["inputs.cond_frames"], cond_features=t["inputs.cond_fea"])
    inputs.update(overrides)
    return model(**inputs)


@pytest.mark.parametrize("case", CASES)
def test_matches_original(case):
    _, t, _, model = build(case)
    with torch.no_grad():
        out = call(model, t).sample
    assert out.shape == t["outputs.sample"].shape == (2, 3, 5, 16, 16)
    assert relative_error(out, t["outputs.sample"]) < TOLERANCE


def test_architectures_are_config_not_code():
    configs = {case: build(case)[3].config for case in CASES}
    assert configs["unet_wo_ref"].include_reference_motion is False
    assert configs["unet_traj_u12"].condition_feature_mode == "trajectory_attention"
    assert configs["unet_traj_ada"].condition_feature_mode == "adaptor"
    assert tuple(configs["unet_traj_ada"].window_size) == (4, 4, 4)
    u22 = configs["unet_traj_ada_u22"]
    assert (u22.block_layout, u22.block_temporal_attention, tuple(u22.adaptor_kernel_size)) == ("grouped", True, (3, 3, 3))
    assert tuple(u22.down_block_adaptors) == (True,) * 4 and u22.motion_embedding_channels is None
    assert len({type(build(case)[3]) for case in CASES}) == 1


@pytest.mark.parametrize("case", ["unet_wo_ref", "unet_traj_ada_u22"])
def test_save_and_load_round_trip(case, tmp_path):
    _, t, _, model = build(case)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = ExtDMUNet3DModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():  # not bit-equal: oneDNN picks kernels by the alignment of the (memory-mapped) weights
        torch.testing.assert_close(call(model, t).sample, call(loaded, t).sample, rtol=0, atol=1e-5)


def test_scalar_timestep_broadcasts():
    _, t, _, model = build("unet_traj_ada")
    with torch.no_grad():
        a = call(model, t, timestep=torch.tensor([500, 500])).sample
        b = call(model, t, timestep=500).sample
    assert torch.equal(a, b)


def test_bfloat16_forward():
    _, t, _, model = build("unet_traj_u12")
    model = model.to(torch.bfloat16)
    with torch.no_grad():
        out = call(model, {k: (v.bfloat16() if v.is_floating_point() else v) for k, v in t.items()}).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert relative_error(out, t["outputs.sample"]) < 5e-2


def test_gradient_checkpointing_gives_the_same_gradients():
    _, t, _, model = build("unet_wo_ref")
    model.train()
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            model.enable_gradient_checkpointing()
            checkpointed = []
            checkpoint = model._gradient_checkpointing_func
            model._gradient_checkpointing_func = lambda module, *args: checkpointed.append(module) or checkpoint(module, *args)
        call(model, t).sample.square().mean().backward()
        grads.append(model.conv_in.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    # every down, middle and up block ran under checkpointing
    assert len(checkpointed) == 2 * len(model.down_blocks) + 1


class _RecordedOps(TorchDispatchMode):
    """The (op, output shape) of every aten op dispatched inside the block."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor):
            self.ops.append((func.__name__, tuple(out.shape)))
        return out


@pytest.mark.parametrize("case", ["unet_wo_ref", "unet_traj_ada_u22"])
def test_backward_makes_no_zero_filled_copies_of_activations(case):
    """Indexing or slicing an activation (q/k/v out of the attention's projection, chunks of windows, the observed
    and future frames) makes autograd build each piece's gradient as a zero-filled tensor of the whole activation;
    split/unbind make one cat/stack. Only parameters (conv_in's channel groups) may still be sliced."""
    _, t, _, model = build(case)
    model.train().set_attention_chunking(40)  # several chunks per attention layer
    loss = call(model, t).sample.square().mean()
    with _RecordedOps() as recorded:
        loss.backward()
    parameter_shapes = {tuple(p.shape) for p in model.parameters()}
    zero_filled = {(op, shape) for op, shape in recorded.ops
                   if op.startswith(("select_backward", "slice_backward")) and shape not in parameter_shapes}
    assert zero_filled == set()
    assert any(op.startswith("stack") for op, _ in recorded.ops)  # q and k's gradients, stacked back


@pytest.mark.parametrize(
    "overrides, message",
    [
        (lambda t: {"sample": t["inputs.x"][:, :2]}, r"`sample` must have shape \(B, 3, num_pred_frames, h, w\) = \(B, 3, 5, \.\.\.\), got \(2, 2, 5, 16, 16\)"),
        (lambda t: {"sample": t["inputs.x"][:, :, :4]}, r"`sample` must have shape .* got \(2, 3, 4, 16, 16\)"),
        (lambda t: {"cond_motion": t["inputs.cond_frames"][:, :, :1]}, r"`cond_motion` must have shape \(B, 3, num_cond_frames, h, w\) = \(B, 3, 2"),
        (lambda t: {"cond_features": t["inputs.cond_fea"][:, :100]}, r"`cond_features` must have shape \(B, cond_feature_channels, .*\) = \(B, 256, 7"),
        (lambda t: {"cond_features": t["inputs.cond_fea"][:1]}, r"batch sizes of `sample`, `cond_motion` and `cond_features` must match"),
    ],
)
def test_bad_inputs_raise_clear_errors(overrides, message):
    _, t, _, model = build("unet_traj_ada")
    with pytest.raises(ValueError, match=message):
        call(model, t, **overrides(t))


def test_conversion_names_bad_keys():
    meta, _, state_dict = load_case("unet_traj_ada")
    arch, kwargs = meta["original_module"], meta["constructor"]

    bad = dict(state_dict, **{"mid_block9.weight": torch.zeros(1)})
    with pytest.raises(CheckpointConversionError, match=r"unknown keys \[mid_block9.weight\]"):
        unet_from_original(bad, arch, **kwargs)

    bad = {k: v for k, v in state_dict.items() if k != "init_conv.bias"}
    with pytest.raises(CheckpointConversionError, match=r"missing keys \[conv_in.bias\]"):
        unet_from_original(bad, arch, **kwargs)

    bad = dict(state_dict, **{"time_mlp.1.bias": torch.zeros(3)})
    with pytest.raises(CheckpointConversionError, match=r"mis-shaped keys \[time_embedding.linear_1.bias: checkpoint \(3,\) vs model \(64,\) \(set the original Unet3D argument `dim`\)\]"):
        unet_from_original(bad, arch, **kwargs)

    freqs_key = next(k for k in state_dict if k.endswith("rotary_emb.freqs"))
    bad = dict(state_dict, **{freqs_key: state_dict[freqs_key] * 2})
    with pytest.raises(CheckpointConversionError, match="rotary frequencies"):
        unet_from_original(bad, arch, **kwargs)


def test_conversion_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`architecture` must be one of"):
        unet_config_from_original("Unet9", dim=16)
    with pytest.raises(ValueError, match=r"unknown original Unet3D arguments \['dims'\]"):
        unet_config_from_original("DenoiseNet_STWAtt_w_wo_ref_adaptor_cross_multi", dims=16)
    with pytest.raises(ValueError, match=r"`channels` of DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_ada must be 256 \+ 256"):
        unet_config_from_original("DenoiseNet_STWAtt_w_w_ref_adaptor_cross_multi_traj_ada", dim=16, channels=300, cond_num=2, pred_num=5)
    with pytest.raises(ValueError, match="text/class conditioning"):
        unet_config_from_original("DenoiseNet_STWAtt_w_wo_ref_adaptor_cross_multi", dim=16, channels=35, cond_dim=8)


@pytest.mark.parametrize("case", CASES)
def test_prepared_condition_gives_the_same_noise(case):
    """The pipeline prepares what depends on the condition alone once per window (``prepare_condition``) instead
    of at every denoising step: the same noise, bit for bit, at any sample and timestep."""
    _, t, _, model = build(case)
    with torch.no_grad():
        condition = model.prepare_condition(t["inputs.cond_frames"], t["inputs.cond_fea"])
        for sample, timestep in ((t["inputs.x"], t["inputs.timestep"]), (t["inputs.x"] * 0.5, 300)):
            direct = call(model, t, sample=sample, timestep=timestep).sample
            prepared = call(model, t, sample=sample, timestep=timestep, condition=condition).sample
            torch.testing.assert_close(prepared, direct, rtol=0, atol=0)
        frames = model.num_observed if model.config.condition_feature_mode == "trajectory_attention" else model.num_feature_frames
        assert condition.conv_in_term.shape == (2, model.config.init_channels, frames, 16, 16)
        assert len(condition.window_attention_mask) == 2 * len(model.down_blocks) + 1
        other = model.prepare_condition(t["inputs.cond_frames"][:1], t["inputs.cond_fea"][:1])
        with pytest.raises(ValueError, match="`condition` was prepared for other inputs"):
            call(model, t, condition=other)
        with pytest.raises(ValueError, match="`cond_features` must have shape"):
            model.prepare_condition(t["inputs.cond_frames"], t["inputs.cond_fea"][:, :, :2])


@pytest.mark.parametrize("case", CASES)
def test_a_step_with_a_prepared_condition_convolves_the_future_frames_only(case):
    """conv_in (and the motion embedding) work frame by frame, and the observed frames' motion does not change
    across denoising steps: with a prepared condition a step feeds them the P noisy future frames only."""
    _, t, _, model = build(case)
    seen = {}
    layers = {"conv_in": model.conv_in, "motion_embedding": getattr(model, "motion_embedding", None)}
    hooks = [layer.register_forward_hook(lambda module, args, out, name=name: seen.setdefault(name, []).append(args[0].shape[2]))
             for name, layer in layers.items() if layer is not None]
    with torch.no_grad():
        condition = model.prepare_condition(t["inputs.cond_frames"], t["inputs.cond_fea"])
        seen.clear()
        call(model, t, condition=condition)
    for hook in hooks:
        hook.remove()
    assert seen and all(frames == [model.config.num_pred_frames] for frames in seen.values()), seen
