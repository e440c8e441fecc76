"""CUDA: the original's reference predictions on the GPU, bfloat16 within tolerance of float32, model CPU
offload onto the GPU, and the denoiser training step in bf16 mixed precision. Skipped without a CUDA device
(CI has none); run them where one is: ``python -m pytest tests/test_cuda.py``."""

import pytest
import torch

from reference_cases import relative_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def conditioning_video(tensors):
    return tensors["inputs.video"].permute(0, 2, 1, 3, 4)


@pytest.fixture
def no_tf32():
    # cuDNN runs float32 convolutions in TF32 by default (10-bit mantissa); parity with the original needs full float32
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("case", ["pipeline_wo_ref", "pipeline_traj_ada"])
def test_cuda_matches_the_original_prediction(reference_pipeline_factory, case, no_tf32):
    meta, t, pipe = reference_pipeline_factory(case)
    pipe.to("cuda")
    cond = meta["config"]["dataset_params"]["train_params"]["cond_frames"]
    pred = meta["config"]["dataset_params"]["train_params"]["pred_frames"]
    out = pipe(conditioning_video(t).cuda(), num_frames=pred, eta=0.0, latents=t["inputs.initial_noise"].cuda(),
               output_type="pt", return_motion=True)
    assert out.frames.device.type == "cuda"
    reference = t["outputs.sample_out_vid"][:, :, cond:].permute(0, 2, 1, 3, 4)
    assert relative_error(out.frames.cpu(), reference) < 1e-3


# Measured (CPU and H100 alike): bfloat16 frames differ from float32 by ~0.1 relative after 10 DDIM steps (the
# U-Net's arithmetic, not the motion: the scheduler keeps it in float32), float16 by ~0.02; the bounds catch a
# broken half-precision path (NaN, overflow, a float32-only op), not rounding.
@pytest.mark.parametrize("dtype, bound", [(torch.bfloat16, 0.2), (torch.float16, 0.05)])
def test_half_precision_rollout_is_close_to_float32(reference_pipeline_factory, dtype, bound, no_tf32):
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    pipe.to("cuda")
    video = conditioning_video(t).cuda()
    noise = torch.randn(1, 3, 10, 16, 16, generator=torch.Generator().manual_seed(0)).cuda()
    full = pipe(video, num_frames=10, eta=0.0, latents=noise, output_type="pt").frames
    pipe.to(dtype=dtype)
    half = pipe(video.to(dtype), num_frames=10, eta=0.0, latents=noise.to(dtype), output_type="pt").frames
    assert half.dtype == dtype and torch.isfinite(half).all()
    assert relative_error(half.float().cpu(), full.cpu()) < bound


def test_model_cpu_offload_onto_the_gpu(reference_pipeline_factory):
    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    kwargs = dict(eta=0.0, latents=t["inputs.initial_noise"], output_type="pt")
    expected = pipe.to("cuda")(conditioning_video(t).cuda(), **kwargs).frames.cpu()
    pipe.to("cpu")
    torch.cuda.empty_cache()
    pipe.enable_model_cpu_offload()
    try:
        assert pipe._execution_device.type == "cuda"
        frames = pipe(conditioning_video(t), **kwargs).frames
        assert frames.device.type == "cuda"
        # after the call the models are back on the CPU
        assert next(pipe.unet.parameters()).device.type == "cpu"
        torch.testing.assert_close(frames.cpu(), expected, rtol=1e-4, atol=1e-4)
    finally:
        pipe.remove_all_hooks()


def test_unet_bfloat16_autocast_training_step():
    """A denoising loss under bf16 autocast backpropagates finite gradients into float32 weights."""
    from extdm_diffusers import ExtDMUNet3DModel
    from extdm_diffusers.schedulers import ExtDMDDIMScheduler
    from extdm_diffusers.training.diffusion_loss import denoising_loss

    unet = ExtDMUNet3DModel(num_cond_frames=2, num_pred_frames=3, cond_feature_channels=16, base_channels=16,
                            channel_mults=(1, 2), attention_heads=2, attention_head_dim=8, resnet_groups=4).cuda()
    scheduler = ExtDMDDIMScheduler()
    target = torch.rand(2, 3, 3, 16, 16, device="cuda") * 2 - 1
    cond_motion = torch.rand(2, 3, 2, 16, 16, device="cuda") * 2 - 1
    features = torch.randn(2, 16, unet.num_feature_frames, 16, 16, device="cuda")
    timesteps = torch.randint(0, 1000, (2,), device="cuda")
    noise = torch.randn_like(target)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = denoising_loss(unet, scheduler, target, cond_motion, features, timesteps, noise=noise).loss
    loss.backward()
    grads = [p.grad for p in unet.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in unet.parameters())


def test_denoising_steps_wait_for_the_device_at_no_step(reference_pipeline_factory):
    """The host waits for the GPU a fixed number of times per window (the condition, the finiteness check, the
    scheduler reading its first timestep), never per denoising step: 2 and 6 steps per window sync alike."""
    import warnings

    _, t, pipe = reference_pipeline_factory("pipeline_traj_ada")
    pipe.to("cuda")
    video = conditioning_video(t).cuda()
    noise = torch.randn(1, 3, 10, 16, 16, generator=torch.Generator().manual_seed(0)).cuda()
    pipe(video, num_frames=10, num_inference_steps=2, eta=0.0, latents=noise, output_type="pt")  # warm-up
    syncs = {}
    for steps in (2, 6):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                pipe(video, num_frames=10, num_inference_steps=steps, eta=0.0, latents=noise, output_type="pt")
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs[steps] = sum("synchroniz" in str(w.message) for w in caught)
    assert syncs[6] == syncs[2], syncs
