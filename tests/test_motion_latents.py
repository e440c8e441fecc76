"""The denoiser's motion latents: the flow grid itself (the original) or scaled displacements from the identity
grid (``ExtDMUNet3DModel(motion_latent_scale=s)``), converted by the pipeline in one place."""

import pytest
import torch

from extdm_diffusers import ExtDMPipeline, ExtDMUNet3DModel, FlowAutoencoder
from extdm_diffusers.conversion import unet_config_from_original
from extdm_diffusers.models.autoencoder_blocks import make_coordinate_grid
from extdm_diffusers.pipelines.pipeline_extdm import clamp_latents, flow_to_latents, latents_to_flow
from extdm_diffusers.schedulers import ExtDMDDIMScheduler

from reference_cases import load_case


def test_displacement_latents_invert_and_put_the_identity_at_zero():
    flow = torch.rand(2, 4, 2, 8, 6) * 2 - 1
    latents = flow_to_latents(flow, 5.0)
    torch.testing.assert_close(latents_to_flow(latents, 5.0), flow, rtol=0, atol=1e-6)
    identity = make_coordinate_grid(8, 6).permute(2, 0, 1).expand(2, 4, 2, 8, 6)
    assert flow_to_latents(identity, 5.0).abs().max() == 0
    # a shift by one motion pixel along x is 2 / (w - 1) grid units, times the scale
    torch.testing.assert_close(flow_to_latents(identity + torch.tensor([2 / 5, 0.0]).view(2, 1, 1), 5.0)[:, :, 0],
                               torch.full((2, 4, 8, 6), 2.0), rtol=0, atol=1e-6)
    assert flow_to_latents(flow, None) is flow and latents_to_flow(flow, None) is flow


def test_clamp_keeps_grids_in_the_frame_in_either_convention():
    grid = torch.rand(1, 3, 2, 4, 4) * 4 - 2  # (B, C, T, h, w), grids partly outside [-1, 1]
    clamped = clamp_latents(grid, None)
    assert clamped.abs().max() <= 1
    latents = torch.cat([flow_to_latents(grid[:, :2].transpose(1, 2), 3.0).transpose(1, 2), grid[:, 2:]], dim=1)
    clamped_latents = clamp_latents(latents, 3.0)
    torch.testing.assert_close(latents_to_flow(clamped_latents[:, :2].transpose(1, 2), 3.0).transpose(1, 2),
                               clamped[:, :2], rtol=0, atol=1e-6)
    torch.testing.assert_close(clamped_latents[:, 2:], clamped[:, 2:], rtol=0, atol=0)


def _pipeline(scale):
    meta, _, _ = load_case("pipeline_wo_ref")
    torch.manual_seed(0)
    autoencoder = FlowAutoencoder(**meta["config"]["flow_params"]["model_params"], sample_size=32).eval()
    config = unet_config_from_original("DenoiseNet_STWAtt_w_wo_ref_adaptor_cross_multi",
                                       **dict(meta["unet_constructor"], pred_num=2))
    unet = ExtDMUNet3DModel(**config, motion_latent_scale=scale).eval()
    pipe = ExtDMPipeline(autoencoder, unet, ExtDMDDIMScheduler(thresholding=scale is None))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_scaled_latents_of_the_true_motion_decode_to_the_autoencoders_reconstruction():
    pipe = _pipeline(4.0)
    video = torch.rand(1, 5, 3, 32, 32)  # 3 observed + 2 future frames
    with torch.no_grad():
        condition = pipe.encode_condition(video)
        encoded = pipe.flow_autoencoder.encode(video, video[:, 2])
        expected = pipe.flow_autoencoder.decode(video[:, 2], encoded.optical_flow[:, 3:], encoded.occlusion_map[:, 3:]).sample
        decoded = pipe.decode_motion(condition.reference, condition.future_motion)
    assert not torch.allclose(condition.future_motion[:, :2].transpose(1, 2), encoded.optical_flow[:, 3:])
    torch.testing.assert_close(decoded, expected, rtol=1e-5, atol=1e-5)
    motion = pipe.motion_to_output(condition.future_motion)  # the human-readable grid, whatever the latents are
    torch.testing.assert_close(motion[:, :, :2], encoded.optical_flow[:, 3:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(motion[:, :, 2:], encoded.occlusion_map[:, 3:], rtol=1e-5, atol=1e-6)


def test_zero_latents_are_the_identity_warp_only_in_the_displacement_convention():
    video = torch.rand(1, 3, 3, 32, 32)
    zeros = lambda pipe, i, t, kwargs: {"latents": torch.zeros_like(kwargs["latents"])}  # noqa: E731
    for scale in (None, 4.0):
        pipe = _pipeline(scale)
        out = pipe(video, callback_on_step_end=zeros, output_type="latent")
        assert out.frames.abs().max() == 0
        grid = out.motion[:, :, :2]
        identity = make_coordinate_grid(*grid.shape[-2:]).permute(2, 0, 1).expand_as(grid)
        if scale is None:
            assert grid.abs().max() == 0  # the grid itself: every pixel samples the frame's centre
        else:
            torch.testing.assert_close(grid, identity, rtol=0, atol=1e-6)


def test_motion_latent_scale_must_be_positive():
    with pytest.raises(ValueError, match="`motion_latent_scale` must be a positive number or None, got 0"):
        ExtDMUNet3DModel(num_cond_frames=2, num_pred_frames=2, cond_feature_channels=8, base_channels=8,
                         channel_mults=(1, 2), attention_heads=1, attention_head_dim=8, motion_latent_scale=0)
