import json
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch
import yaml

from extdm_diffusers import ExtDMDDIMScheduler, ExtDMPipeline, ExtDMUNet3DModel, FlowAutoencoder
from extdm_diffusers.models import compose_motion
from extdm_diffusers.conversion import CheckpointConversionError, pipeline_from_original, unet_config_from_original
from reference_cases import DTYPE_ARGUMENT, diffusion_checkpoint, load_case, relative_error, split_autoencoder


def conditioning_video(tensors):
    return tensors["inputs.video"].permute(0, 2, 1, 3, 4)  # original (B, C, T, H, W) -> ours (B, T, C, H, W)


@pytest.mark.parametrize("case", ["pipeline_wo_ref", "pipeline_traj_ada"])
def test_matches_original_prediction(reference_pipeline_factory, case):
    meta, t, pipe = reference_pipeline_factory(case)
    cond, pred = meta["config"]["dataset_params"]["train_params"]["cond_frames"], meta["config"]["dataset_params"]["train_params"]["pred_frames"]
    out = pipe(conditioning_video(t), num_frames=pred, num_inference_steps=10, eta=0.0,
               latents=t["inputs.initial_noise"], output_type="pt", return_motion=True)
    reference = t["outputs.sample_out_vid"][:, :, cond:].permute(0, 2, 1, 3, 4)
    assert out.frames.shape == reference.shape == (1, pred, 3, 32, 32)
    assert relative_error(out.frames, reference) < 1e-3
    reference_motion = torch.cat([t["outputs.sample_vid_grid"], t["outputs.sample_vid_conf"]], dim=1)[:, :, cond:]
    assert relative_error(out.motion, reference_motion.permute(0, 2, 1, 3, 4)) < 1e-3


def test_rollout_chains_windows_like_the_original(reference_pipeline_factory):
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")  # 2 observed -> 5 predicted
    video = conditioning_video(t)
    noise = torch.randn(1, 3, 15, 16, 16, generator=torch.Generator().manual_seed(3))
    steps = dict(eta=0.0, num_inference_steps=3, output_type="pt")  # how windows chain does not depend on the steps
    rollout = pipe(video, num_frames=14, latents=noise, **steps).frames
    assert rollout.shape == (1, 14, 3, 32, 32)
    # window by window, by hand: each conditioned on the last 2 frames decoded so far
    first = pipe(video, latents=noise[:, :, :5], **steps).frames
    second = pipe(first[:, -2:], latents=noise[:, :, 5:10], **steps).frames
    third = pipe(second[:, -2:], latents=noise[:, :, 10:], **steps).frames
    # window 1 agrees exactly; windows 2 and 3 differ by rounding that depends on the CPU: up to 7.5e-5 measured on an
    # AVX-512 AMD EPYC (4 noise seeds; their conditions encode identically), where the AVX2 EPYC and the AMX Xeon
    # stayed within 1e-5 + 1e-4 x the value; a wrong condition frame differs by tenths
    torch.testing.assert_close(rollout, torch.cat([first, second, third], dim=1)[:, :14], rtol=0, atol=2e-4)


def test_rollout_when_the_window_is_shorter_than_the_condition():
    """With fewer predicted than observed frames, the next window also sees reconstructed observed frames."""
    meta, _, state_dict = load_case("pipeline_wo_ref")
    autoencoder = FlowAutoencoder(**meta["config"]["flow_params"]["model_params"], sample_size=32).eval()
    unet = ExtDMUNet3DModel(**unet_config_from_original(
        "DenoiseNet_STWAtt_w_wo_ref_adaptor_cross_multi", **dict(meta["unet_constructor"], pred_num=2))).eval()
    pipe = ExtDMPipeline(autoencoder, unet, ExtDMDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    video = torch.rand(1, 3, 3, 32, 32)
    noise = torch.randn(1, 3, 4, 16, 16)
    rollout = pipe(video, num_frames=4, eta=0.0, latents=noise, output_type="pt").frames
    first = pipe(video, eta=0.0, latents=noise[:, :, :2], output_type="pt").frames
    with torch.no_grad():
        encoded = autoencoder.encode(video, video[:, -1])
        reconstructed = autoencoder.decode(video[:, -1], encoded.optical_flow[:, -1:], encoded.occlusion_map[:, -1:]).sample
    second = pipe(torch.cat([reconstructed, first], dim=1).clamp(0, 1), eta=0.0, latents=noise[:, :, 2:], output_type="pt").frames
    torch.testing.assert_close(rollout, torch.cat([first, second], dim=1), rtol=1e-4, atol=1e-5)


def test_observed_rollout_warps_the_observed_frame_by_the_composed_motion(reference_pipeline_factory, tmp_path):
    """``rollout_reference="observed"``: the same denoised motion as the original's rollout (same condition), the
    first window's frames alike, and every later frame one warp of the last observed frame, its motion composed
    with that of the frame the window is relative to."""
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")  # 2 observed -> 5 predicted
    video = conditioning_video(t)
    noise = torch.randn(1, 3, 10, 16, 16, generator=torch.Generator().manual_seed(3))
    kwargs = dict(num_frames=10, eta=0.0, num_inference_steps=3, latents=noise, output_type="pt", return_motion=True)
    original = pipe(video, **kwargs)
    observed = pipe(video, rollout_reference="observed", **kwargs)
    torch.testing.assert_close(observed.motion, original.motion, rtol=0, atol=0)
    torch.testing.assert_close(observed.frames[:, :5], original.frames[:, :5], rtol=0, atol=0)
    assert (observed.frames[:, 5:] - original.frames[:, 5:]).abs().max() > 1e-3
    motion = observed.motion  # (B, T, 3, h, w): flow x, y and occlusion in [0, 1]
    flow, occlusion = compose_motion(motion[:, 4, :2], motion[:, 4, 2:], motion[:, 5:, :2], motion[:, 5:, 2:])
    with torch.no_grad():
        by_hand = pipe.flow_autoencoder.decode(video[:, -1], flow, occlusion).sample.clamp(0, 1)
    torch.testing.assert_close(observed.frames[:, 5:], by_hand, rtol=1e-4, atol=1e-5)
    # decode_latents decodes the latent output the same way
    latent = pipe(video, rollout_reference="observed", **{**kwargs, "output_type": "latent"}).frames
    torch.testing.assert_close(pipe.decode_latents(video, latent, output_type="pt", rollout_reference="observed"),
                               observed.frames, rtol=0, atol=0)
    # a pipeline made with it rolls out that way by default, and keeps it through save_pretrained
    made = ExtDMPipeline(pipe.flow_autoencoder, pipe.unet, pipe.scheduler, rollout_reference="observed")
    made.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["rollout_reference"] == "observed"
    loaded = ExtDMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.rollout_reference == "observed"
    torch.testing.assert_close(loaded(video, **kwargs).frames, loaded(video, rollout_reference="observed", **kwargs).frames,
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"`rollout_reference` must be one of \('last_decoded', 'observed'\), got 'first'"):
        pipe(video, rollout_reference="first")
    with pytest.raises(ValueError, match=r"`rollout_reference` must be one of"):
        ExtDMPipeline(pipe.flow_autoencoder, pipe.unet, pipe.scheduler, rollout_reference="observed_frame")


def test_samples_are_reproducible_and_distinct(reference_pipeline_factory):
    _, t, pipe = reference_pipeline_factory("pipeline_wo_ref")
    video = conditioning_video(t).repeat(2, 1, 1, 1, 1)
    run = lambda seed: pipe(video, num_samples_per_video=2, output_type="pt", generator=torch.Generator().manual_seed(seed)).frames
    a, b, c = run(0), run(0), run(1)
    assert a.shape == (4, 5, 3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a[0], a[1])  # two samples of one video differ


def test_save_load_gives_the_same_frames(reference_pipeline_factory, tmp_path):
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").exists()
    loaded = ExtDMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, ExtDMDDIMScheduler)
    kwargs = dict(eta=0.0, latents=t["inputs.initial_noise"], output_type="pt")
    # not bit-equal: oneDNN picks kernels by the alignment of the (memory-mapped) weights
    torch.testing.assert_close(pipe(conditioning_video(t), **kwargs).frames, loaded(conditioning_video(t), **kwargs).frames, rtol=0, atol=2e-4)
    bf16 = ExtDMPipeline.from_pretrained(tmp_path, **{DTYPE_ARGUMENT: torch.bfloat16})
    bf16.set_progress_bar_config(disable=True)
    frames = bf16(conditioning_video(t), **kwargs).frames
    assert frames.dtype == torch.bfloat16 and torch.isfinite(frames).all()


def test_input_formats_and_output_types(reference_pipeline_factory):
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    video = conditioning_video(t)
    kwargs = dict(eta=0.0, latents=t["inputs.initial_noise"])
    reference = pipe(video, output_type="pt", **kwargs).frames
    uint8 = (video[0].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # (T, H, W, C)
    from_numpy = pipe(uint8, output_type="np", **kwargs).frames
    assert from_numpy.shape == (1, 5, 32, 32, 3)
    assert np.abs(from_numpy - reference.permute(0, 1, 3, 4, 2).numpy()).max() < 0.05
    pil = [PIL.Image.fromarray(frame) for frame in uint8]
    from_pil = pipe(pil, output_type="pil", **kwargs).frames
    assert len(from_pil) == 1 and len(from_pil[0]) == 5 and from_pil[0][0].size == (32, 32)
    gray = pipe(video[:, :, :1], output_type="pt", **kwargs).frames  # grayscale input to an RGB model
    expected = pipe(video[:, :, :1].expand(-1, -1, 3, -1, -1), output_type="pt", **kwargs).frames
    assert torch.equal(gray, expected)


def test_callback_can_replace_latents(reference_pipeline_factory):
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    steps = []

    def callback(pipeline, step, timestep, kwargs):
        steps.append(int(timestep))
        return {"latents": torch.zeros_like(kwargs["latents"])} if step == 9 else {}

    out = pipe(conditioning_video(t), eta=0.0, output_type="pt", return_motion=True, callback_on_step_end=callback)
    assert steps == [909, 818, 727, 636, 545, 454, 363, 272, 181, 90]
    assert torch.equal(out.motion[:, :, :2], torch.zeros_like(out.motion[:, :, :2]))


@pytest.mark.parametrize(
    "video, kwargs, message",
    [
        (torch.rand(1, 1, 3, 32, 32), {}, r"exactly the 2 conditioning frames .* got 1"),
        (torch.rand(1, 3, 3, 32, 32), {}, r"exactly the 2 conditioning frames .* got 3; pass e.g. video\[:, -2:\]"),
        (torch.rand(1, 2, 3, 64, 64), {}, r"frames must be 32x32 .* got 64x64; resize them first"),
        (torch.rand(1, 2, 4, 32, 32), {}, r"`video` has 4 channels, the autoencoder expects 3"),
        (torch.rand(1, 2, 3, 32, 32) * 2, {}, r"`video` values must lie in \[0, 1\]"),
        (torch.rand(3, 32, 32), {}, r"`video` as a tensor must be \(T, C, H, W\) or \(B, T, C, H, W\)"),
        (torch.rand(1, 2, 3, 32, 32), {"latents": torch.zeros(1, 3, 4, 16, 16)}, r"`latents` must have shape \(1, 3, 5, 16, 16\)"),
        (torch.rand(1, 2, 3, 32, 32), {"output_type": "tensor"}, r"`output_type` must be 'pt', 'np', 'pil' or 'latent'"),
    ],
)
def test_bad_inputs_raise_clear_errors(reference_pipeline_factory, video, kwargs, message):
    _, _, pipe = reference_pipeline_factory("pipeline_traj_ada")
    with pytest.raises(ValueError, match=message):
        pipe(video, **kwargs)


def test_conversion_checks_the_schedule():
    meta, _, state_dict = load_case("pipeline_traj_ada")
    dm = diffusion_checkpoint(state_dict)
    dm["diffusion"]["betas"] = torch.linspace(1e-4, 0.02, 1000)
    with pytest.raises(CheckpointConversionError, match="`betas` is not the original cosine schedule"):
        pipeline_from_original(split_autoencoder(state_dict, "ae."), dm, meta["config"], meta["original_modules"][1], meta["unet_constructor"])


def test_convert_cli_writes_a_loadable_folder_with_a_model_card(tmp_path):
    meta, t, state_dict = load_case("pipeline_wo_ref")
    torch.save(split_autoencoder(state_dict, "ae."), tmp_path / "ae.pth")
    torch.save(dict(diffusion_checkpoint(state_dict), example=1234), tmp_path / "dm.pth")
    config = dict(meta["config"], experiment_name="smmnist64")
    (tmp_path / "smmnist.yaml").write_text(yaml.safe_dump(config))
    output = tmp_path / "converted"
    subprocess.run(
        [sys.executable, "-m", "extdm_diffusers.convert", "--ae_checkpoint", str(tmp_path / "ae.pth"),
         "--dm_checkpoint", str(tmp_path / "dm.pth"), "--config", str(tmp_path / "smmnist.yaml"),
         "--architecture", meta["original_modules"][1], "--unet_kwargs", json.dumps(meta["unet_constructor"]),
         "--output_dir", str(output)],
        check=True, capture_output=True, text=True,
    )
    card = (output / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "diffusers" and "video-prediction" in metadata["tags"]
    assert metadata["datasets"] == ["SMMNIST"]
    assert "DenoiseNet_STWAtt_w_wo_ref_adaptor_cross_multi" in card and "ExtDMPipeline.from_pretrained" in card

    pipe = ExtDMPipeline.from_pretrained(output)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(conditioning_video(t), eta=0.0, latents=t["inputs.initial_noise"], output_type="pt").frames
    reference = t["outputs.sample_out_vid"][:, :, 3:].permute(0, 2, 1, 3, 4)
    assert relative_error(frames, reference) < 1e-3



def test_model_cpu_offload_hooks_give_the_same_frames(reference_pipeline_factory):
    """The offload path (accelerate hooks on forward, encode and decode), exercised with the CPU as the
    execution device; on a GPU machine the same hooks move each model to the GPU when it is called."""
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    kwargs = dict(eta=0.0, latents=t["inputs.initial_noise"], output_type="pt")
    expected = pipe(conditioning_video(t), **kwargs).frames
    pipe.enable_model_cpu_offload(device="cpu")
    try:
        assert hasattr(pipe.flow_autoencoder, "_hf_hook") and hasattr(pipe.unet, "_hf_hook")
        torch.testing.assert_close(pipe(conditioning_video(t), **kwargs).frames, expected)
    finally:
        pipe.remove_all_hooks()
