"""Pipeline behaviour a user relies on beyond parity: stock schedulers keep the ExtDM schedule and roll out
over several windows, bad inputs get clear errors, offload hooks move each model before it computes,
saved configs describe the architecture by themselves, occlusion can be switched off as the original
evaluation does."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from extdm_diffusers import ExtDMDDIMScheduler, ExtDMPipeline, FlowAutoencoder
from extdm_diffusers.models import flow_autoencoder as flow_autoencoder_module

STOCK_SCHEDULERS = [DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler]


def conditioning_video(tensors):
    return tensors["inputs.video"].permute(0, 2, 1, 3, 4)


@pytest.fixture(scope="module")
def traj_ada(reference_pipeline_factory):
    return reference_pipeline_factory("pipeline_traj_ada")  # 2 observed -> 5 predicted, 32 px


# ------------------------------------------------------------------------------------------ schedulers
def _schedule_fields(config):
    fields = {k: config[k] for k in ("beta_schedule", "num_train_timesteps", "prediction_type")}
    fields.update({k: config[k] for k in ("thresholding", "dynamic_thresholding_ratio", "sample_max_value") if k in config})
    return fields


@pytest.mark.parametrize("scheduler_class", STOCK_SCHEDULERS)
def test_stock_schedulers_keep_the_extdm_schedule_in_memory_and_after_reload(scheduler_class, tmp_path):
    extdm = ExtDMDDIMScheduler()
    expected = dict(beta_schedule="squaredcos_cap_v2", num_train_timesteps=1000, prediction_type="epsilon")
    in_memory = scheduler_class.from_config(extdm.config)
    assert {k: in_memory.config[k] for k in expected} == expected
    if "thresholding" in in_memory.config:
        assert in_memory.config.thresholding is True and in_memory.config.dynamic_thresholding_ratio == 0.9
    in_memory.save_pretrained(tmp_path)
    reloaded = scheduler_class.from_pretrained(tmp_path)
    assert _schedule_fields(reloaded.config) == _schedule_fields(in_memory.config)


@pytest.mark.parametrize("scheduler_class", STOCK_SCHEDULERS)
def test_stock_schedulers_roll_out_several_windows_with_motion_in_range(traj_ada, scheduler_class):
    _, t, pipe = traj_ada
    original = pipe.scheduler
    pipe.scheduler = scheduler_class.from_config(original.config)
    try:
        out = pipe(conditioning_video(t), num_frames=12, num_inference_steps=4, output_type="pt", return_motion=True,
                   generator=torch.Generator().manual_seed(0))
    finally:
        pipe.scheduler = original
    assert out.frames.shape == (1, 12, 3, 32, 32) and torch.isfinite(out.frames).all()
    flow, occlusion = out.motion[:, :, :2], out.motion[:, :, 2]
    assert flow.abs().max() <= 1 and occlusion.min() >= 0 and occlusion.max() <= 1


def test_a_non_finite_sample_is_an_error_naming_window_and_step(traj_ada):
    _, t, pipe = traj_ada

    def poison(pipeline, step, timestep, kwargs):
        return {"latents": kwargs["latents"] * float("nan")} if step == 12 else {}

    # the callback runs after the finiteness check of its step: the NaN shows at the next one (window 2, step 4)
    with pytest.raises(FloatingPointError, match=r"window 2/2 at step 4/10"):
        pipe(conditioning_video(t), num_frames=10, output_type="pt", callback_on_step_end=poison)


# ------------------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize(
    "make_video, kwargs, error, message",
    [
        (lambda v: v * float("nan"), {}, ValueError, r"`video` holds NaN"),
        (lambda v: v[:0], {}, ValueError, r"`video` is empty"),
        (lambda v: v.numpy(), {}, ValueError, r"channels-last .* looks channels-first"),
        (lambda v: v, {"num_frames": 2.5}, ValueError, r"`num_frames` must be an integer, got 2.5"),
        (lambda v: v, {"eta": -0.1}, ValueError, r"`eta` must be >= 0"),
        (lambda v: v, {"generator": [torch.Generator()] * 3, "num_samples_per_video": 2}, ValueError,
         r"one generator per predicted video, B x num_samples_per_video = 2, got 3"),
        (lambda v: v, {"callback_on_step_end": lambda *args: None}, TypeError, r"`callback_on_step_end` must return a dict"),
        (lambda v: v, {"callback_on_step_end_tensor_inputs": ["noise"]}, ValueError, r"may only name"),
    ],
)
def test_bad_inputs_raise_clear_errors(traj_ada, make_video, kwargs, error, message):
    _, t, pipe = traj_ada
    with pytest.raises(error, match=message):
        pipe(make_video(conditioning_video(t)), num_inference_steps=1, **kwargs)


def test_pil_frames_of_mixed_sizes_are_rejected(traj_ada):
    _, _, pipe = traj_ada
    frames = [PIL.Image.new("RGB", (32, 32)), PIL.Image.new("RGB", (32, 30))]
    with pytest.raises(ValueError, match=r"same size, got \(width, height\) sizes \[\(32, 30\), \(32, 32\)\]"):
        pipe(frames)


def test_callback_sees_the_requested_tensors_and_steps_count_over_windows(traj_ada):
    _, t, pipe = traj_ada
    seen = []

    def callback(pipeline, step, timestep, kwargs):
        seen.append((step, sorted(kwargs)))
        return kwargs

    pipe(conditioning_video(t), num_frames=10, num_inference_steps=3, output_type="pt", callback_on_step_end=callback,
         callback_on_step_end_tensor_inputs=["latents", "cond_motion"])
    assert [s for s, _ in seen] == list(range(6)) and seen[0][1] == ["cond_motion", "latents"]
    assert pipe.num_timesteps == 6


def test_latent_output_is_the_predicted_motion(traj_ada):
    """``"latent"``: the denoised motion in the denoiser's convention, (N, 3, T, h, w) like ``latents``; the
    readable motion (occlusion in [0, 1]) stays ``motion``, and ``decode_latents`` gives the frames."""
    _, t, pipe = traj_ada
    kwargs = dict(eta=0.0, latents=t["inputs.initial_noise"])
    decoded = pipe(conditioning_video(t), output_type="pt", return_motion=True, **kwargs)
    latent = pipe(conditioning_video(t), output_type="latent", **kwargs)
    assert latent.frames.shape == (1, 3, 5, 16, 16)
    torch.testing.assert_close(latent.motion, decoded.motion, rtol=0, atol=0)
    torch.testing.assert_close(pipe.motion_to_output(latent.frames), decoded.motion, rtol=0, atol=0)
    torch.testing.assert_close(pipe.decode_latents(conditioning_video(t), latent.frames, output_type="pt"), decoded.frames,
                               rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ occlusion
def test_without_occlusion_the_condition_is_zero_and_frames_are_plain_warps(traj_ada):
    _, t, pipe = traj_ada
    cond_occlusion = []

    def callback(pipeline, step, timestep, kwargs):
        cond_occlusion.append(kwargs["cond_motion"][:, 2])
        return {}

    video = conditioning_video(t)
    out = pipe(video, eta=0.0, latents=t["inputs.initial_noise"], output_type="pt", return_motion=True, use_occlusion=False,
               callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["cond_motion"])
    assert all(torch.equal(o, torch.zeros_like(o)) for o in cond_occlusion)
    warped = pipe.flow_autoencoder.decode(video[:, -1], out.motion[:, :, :2]).deformed
    torch.testing.assert_close(out.frames, warped.clamp(0, 1))
    with_occlusion = pipe(video, eta=0.0, latents=t["inputs.initial_noise"], output_type="pt")
    assert not torch.allclose(with_occlusion.frames, out.frames)


# ------------------------------------------------------------------------------------------ offload
def test_model_cpu_offload_moves_each_model_before_it_computes(reference_pipeline_factory):
    """Record the offload hooks' moves and the models' first computations: the U-Net's once-per-window step
    (``prepare_condition``) must not run before its hook moved the U-Net to the execution device."""
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    events = []
    pipe.enable_model_cpu_offload(device="cpu")
    try:
        for name in ("flow_autoencoder", "unet"):
            hook = getattr(pipe, name)._hf_hook
            original = hook.pre_forward

            def recording(module, *args, _name=name, _original=original, **kwargs):
                events.append(("move", _name))
                return _original(module, *args, **kwargs)

            hook.pre_forward = recording
        handles = [
            pipe.unet.time_position_bias.register_forward_pre_hook(lambda *a: events.append(("compute", "unet"))),
            pipe.flow_autoencoder.region_predictor.register_forward_pre_hook(lambda *a: events.append(("compute", "flow_autoencoder"))),
        ]
        pipe(conditioning_video(t), num_inference_steps=1, output_type="pt")
        for handle in handles:
            handle.remove()
    finally:
        pipe.remove_all_hooks()
    for name in ("flow_autoencoder", "unet"):
        first_compute = events.index(("compute", name))
        assert ("move", name) in events[:first_compute], events[: first_compute + 1]


# ------------------------------------------------------------------------------------------ saving
def test_saved_autoencoder_config_is_complete_and_survives_a_change_of_defaults(tmp_path, monkeypatch):
    model = FlowAutoencoder(num_regions=3, bg_predictor_params={"bg_type": "affine"}, sample_size=64).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["region_predictor_params"]["block_expansion"] == 32
    assert saved["generator_params"]["pixelwise_flow_predictor_params"]["estimate_occlusion_map"] is True
    assert saved["bg_predictor_params"] == {"block_expansion": 32, "max_features": 1024, "num_blocks": 5, "bg_type": "affine"}

    monkeypatch.setattr(flow_autoencoder_module, "DEFAULT_REGION_PREDICTOR_PARAMS",
                        dict(flow_autoencoder_module.DEFAULT_REGION_PREDICTOR_PARAMS, block_expansion=16))
    monkeypatch.setattr(flow_autoencoder_module, "DEFAULT_GENERATOR_PARAMS",
                        dict(flow_autoencoder_module.DEFAULT_GENERATOR_PARAMS, num_bottleneck_blocks=2))
    changed = FlowAutoencoder(num_regions=3, sample_size=64)  # the new defaults do change the architecture
    assert sum(p.numel() for p in changed.parameters()) != sum(p.numel() for p in model.parameters())
    loaded = FlowAutoencoder.from_pretrained(tmp_path).eval()
    frames = torch.rand(1, 2, 3, 64, 64)
    torch.testing.assert_close(loaded.encode(frames, frames[:, -1]).optical_flow, model.encode(frames, frames[:, -1]).optical_flow,
                               rtol=0, atol=0)


def test_saved_unet_config_resolves_its_derived_defaults(traj_ada):
    _, _, pipe = traj_ada
    config = pipe.unet.config
    assert config.init_channels == config.base_channels and config.rotary_dim is not None
    assert len(config.down_block_adaptors) == len(config.channel_mults) and config.adaptor_layers >= 1


def test_diffusion_pipeline_loads_the_folder_through_the_custom_pipeline_route(traj_ada, tmp_path):
    _, t, pipe = traj_ada
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline="pipeline_extdm", trust_remote_code=True)
    assert type(loaded) is ExtDMPipeline
    loaded.set_progress_bar_config(disable=True)
    kwargs = dict(eta=0.0, latents=t["inputs.initial_noise"], output_type="np")
    # not bit-equal: oneDNN picks kernels by the alignment of the (memory-mapped) weights
    np.testing.assert_allclose(loaded(conditioning_video(t), **kwargs).frames, pipe(conditioning_video(t), **kwargs).frames, rtol=0, atol=2e-4)
