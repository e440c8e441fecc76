"""The denoiser's motion latents: the flow grid itself (the original) or scaled displacements from the identity
grid (``ExtDMUNet3DModel(motion_latent_scale=s)``), measured from nothing (the original) or from the autoencoder's
constant-velocity extrapolation (``motion_prior``), converted by the pipeline in one place."""

import pytest
import torch

from extdm_diffusers import ExtDMPipeline, ExtDMUNet3DModel, FlowAutoencoder
from extdm_diffusers.conversion import unet_config_from_original
from extdm_diffusers.models.autoencoder_blocks import make_coordinate_grid
from extdm_diffusers.models.flow_autoencoder import _reflect_into_frame
from extdm_diffusers.models.region_predictor import RegionParams
from extdm_diffusers.pipelines.pipeline_extdm import clamp_latents, encode_condition, flow_to_latents, latents_to_flow
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


def _pipeline(scale, motion_prior=None, residual_scaling=None, prior_input=False):
    meta, _, _ = load_case("pipeline_wo_ref")
    torch.manual_seed(0)
    autoencoder = FlowAutoencoder(**meta["config"]["flow_params"]["model_params"], sample_size=32).eval()
    config = unet_config_from_original("DenoiseNet_STWAtt_w_wo_ref_adaptor_cross_multi",
                                       **dict(meta["unet_constructor"], pred_num=2))
    unet = ExtDMUNet3DModel(**config, motion_latent_scale=scale, motion_prior=motion_prior,
                            motion_prior_residual_scaling=residual_scaling, motion_prior_input=prior_input).eval()
    pipe = ExtDMPipeline(autoencoder, unet, ExtDMDDIMScheduler(thresholding=scale is None and motion_prior is None))
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


def _with_shift(regions: RegionParams, shift: torch.Tensor) -> RegionParams:
    return RegionParams(**{**regions, "shift": shift})


def test_extrapolation_without_velocity_is_the_reference_encoded_against_itself():
    autoencoder = _pipeline(4.0).flow_autoencoder
    reference = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        held = autoencoder.encode(reference[:, None].expand(-1, 3, -1, -1, -1), reference)
        regions = held.region_params.frame(0, 3)
        guess = autoencoder.extrapolate(reference, regions, regions, 3)
    assert guess.features is None and guess.region_params is None
    torch.testing.assert_close(guess.optical_flow, held.optical_flow, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(guess.occlusion_map, held.occlusion_map, rtol=1e-5, atol=1e-6)


def test_extrapolation_moves_regions_at_constant_velocity():
    autoencoder = _pipeline(4.0).flow_autoencoder
    reference = torch.rand(2, 3, 32, 32)
    step = torch.tensor([0.05, -0.03])
    with torch.no_grad():
        regions = autoencoder.encode(reference[:, None], reference).region_params
        two_frames = autoencoder.extrapolate(reference, _with_shift(regions, regions.shift - step), regions, 2)
        # one frame at twice the velocity lands where the second frame at the velocity does
        one_frame = autoencoder.extrapolate(reference, _with_shift(regions, regions.shift - 2 * step), regions, 1)
    torch.testing.assert_close(one_frame.optical_flow[:, 0], two_frames.optical_flow[:, 1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(two_frames.optical_flow[:, 0], two_frames.optical_flow[:, 1], atol=1e-3)
    with pytest.raises(ValueError, match="`num_frames` must be a positive int, got 0"):
        autoencoder.extrapolate(reference, regions, regions, 0)
    with pytest.raises(ValueError, match="`previous_regions` must be RegionParams of the 1 reference frames"):
        autoencoder.extrapolate(reference[:1], regions, regions, 1)


def test_the_prior_is_what_the_denoiser_measures_the_motion_from():
    pipe = _pipeline(4.0, "constant_velocity")
    video = torch.rand(2, 5, 3, 32, 32)  # 3 observed + 2 future frames
    with torch.no_grad():
        condition = pipe.encode_condition(video)
        encoded = pipe.flow_autoencoder.encode(video[:, :3], video[:, 2])
        regions = encoded.region_params
        guess = pipe.flow_autoencoder.extrapolate(video[:, 2], regions.frame(1, 3), regions.frame(2, 3), 2)
    assert condition.prior_motion.shape == condition.future_motion.shape == (2, 3, 2, 16, 16)
    torch.testing.assert_close(pipe.motion_to_output(condition.prior_motion),
                               torch.cat([guess.optical_flow, guess.occlusion_map], dim=2), rtol=1e-5, atol=1e-5)
    target = condition.denoising_target()
    torch.testing.assert_close(target, condition.future_motion - condition.prior_motion, rtol=0, atol=0)
    torch.testing.assert_close(condition.motion_from_sample(target), condition.future_motion, rtol=0, atol=1e-6)
    assert _pipeline(4.0).encode_condition(video).prior_motion is None


def test_a_zero_sample_under_a_prior_is_the_constant_velocity_guess():
    pipe = _pipeline(4.0, "constant_velocity")
    video = torch.rand(1, 3, 3, 32, 32)
    zeros = lambda pipe, i, t, kwargs: {"latents": torch.zeros_like(kwargs["latents"])}  # noqa: E731
    out = pipe(video, callback_on_step_end=zeros, output_type="latent")
    with torch.no_grad():
        prior = pipe.encode_condition(video).prior_motion
    torch.testing.assert_close(out.frames, clamp_latents(prior, 4.0), rtol=0, atol=1e-6)
    assert out.frames.abs().max() > 0


def test_by_frame_scaling_divides_each_frames_residual_by_its_number_and_inverts():
    video = torch.rand(2, 5, 3, 32, 32)  # 3 observed + 2 future frames
    with torch.no_grad():
        scaled = _pipeline(4.0, "constant_velocity", "by_frame").encode_condition(video)
        plain = _pipeline(4.0, "constant_velocity").encode_condition(video)  # the same autoencoder
    torch.testing.assert_close(scaled.prior_motion, plain.prior_motion, rtol=0, atol=0)
    per_frame = torch.tensor([1.0, 2.0]).view(1, 1, 2, 1, 1)
    torch.testing.assert_close(scaled.denoising_target(), plain.denoising_target() / per_frame, rtol=0, atol=1e-6)
    torch.testing.assert_close(scaled.motion_from_sample(scaled.denoising_target()), scaled.future_motion,
                               rtol=0, atol=1e-5)
    repeated = scaled.repeat_interleave(3)  # one scale, shared by every sample
    assert repeated.residual_scale.shape == (1, 1, 2, 1, 1) and repeated.prior_motion.shape[0] == 6
    torch.testing.assert_close(repeated.denoising_target(), scaled.denoising_target().repeat_interleave(3, dim=0))
    small = dict(num_cond_frames=2, num_pred_frames=2, cond_feature_channels=8, base_channels=8, channel_mults=(1, 2),
                 attention_heads=1, attention_head_dim=8)
    with pytest.raises(ValueError, match="`motion_prior_residual_scaling` must be None or one of \\('by_frame',\\) "
                                         "\\(with a `motion_prior`\\), got 'by_frame' with motion_prior=None"):
        ExtDMUNet3DModel(motion_prior_residual_scaling="by_frame", **small)
    with pytest.raises(ValueError, match="`residual_scaling` must be None or one of .*got 'linear'"):
        encode_condition(_pipeline(4.0).flow_autoencoder, video[:, :3], 3, 3, motion_prior="constant_velocity",
                         num_pred_frames=2, residual_scaling="linear")


def test_a_denoiser_that_reads_the_guess_sees_it_beside_the_motion_and_before_the_features():
    video = torch.rand(2, 5, 3, 32, 32)  # 3 observed + 2 future frames
    reads, plain = _pipeline(4.0, "constant_velocity", prior_input=True), _pipeline(4.0, "constant_velocity")
    unet = reads.unet
    assert unet.conv_in.in_channels == plain.unet.conv_in.in_channels + 3
    with torch.no_grad():
        condition = reads.encode_condition(video)
        sample, t = torch.randn(condition.future_motion.shape, generator=torch.Generator().manual_seed(0)), 500
        inputs = (sample, t, condition.cond_motion, condition.cond_features)
        out = unet(*inputs, prior_motion=condition.prior_motion).sample
        # prepared once per window, as the pipeline does, the guess gives the same step
        prepared = unet.prepare_condition(condition.cond_motion, condition.cond_features, condition.prior_motion)
        torch.testing.assert_close(unet(*inputs, condition=prepared).sample, out, rtol=1e-4, atol=1e-5)
        assert (unet(*inputs, prior_motion=condition.prior_motion + 1).sample - out).abs().max() > 1e-3
        # conv_in's input channels are [motion, guess, features]: without the guess's weights it is the plain model
        weights = unet.state_dict()
        weights["conv_in.weight"] = torch.cat([weights["conv_in.weight"][:, :3], weights["conv_in.weight"][:, 6:]], dim=1)
        plain.unet.load_state_dict(weights)
        unet.conv_in.weight[:, 3:6] = 0
        torch.testing.assert_close(unet(*inputs, prior_motion=condition.prior_motion).sample,
                                   plain.unet(*inputs).sample, rtol=1e-4, atol=1e-5)
    # the training loss hands the guess on
    from extdm_diffusers.training.diffusion_loss import denoising_loss

    noise = torch.randn(sample.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = denoising_loss(unet, reads.scheduler, condition.denoising_target(), condition.cond_motion,
                              condition.cond_features, t, noise=noise, prior_motion=condition.prior_motion)
        noisy = reads.scheduler.add_noise(condition.denoising_target(), noise, torch.tensor([t, t]))
        torch.testing.assert_close(loss.model_output, unet(noisy, t, condition.cond_motion, condition.cond_features,
                                                            prior_motion=condition.prior_motion).sample)
    frames = reads(video[:, :3], num_frames=4, generator=torch.Generator().manual_seed(0), output_type="pt").frames
    assert frames.shape == (2, 4, 3, 32, 32) and torch.isfinite(frames).all()
    with pytest.raises(ValueError, match="`prior_motion` \\(the guessed window's motion; `motion_prior_input` is True\\) "
                                         "must have shape \\(B, 3, num_pred_frames, h, w\\) = \\(2, 3, 2, 16, 16\\), got NoneType"):
        unet(*inputs)
    with pytest.raises(ValueError, match="`prior_motion` was given, but this model does not read it"):
        plain.unet(*inputs, prior_motion=condition.prior_motion)
    small = dict(num_cond_frames=2, num_pred_frames=2, cond_feature_channels=8, base_channels=8, channel_mults=(1, 2),
                 attention_heads=1, attention_head_dim=8)
    with pytest.raises(ValueError, match="`motion_prior_input=True` needs a `motion_prior` .*got motion_prior=None"):
        ExtDMUNet3DModel(motion_prior_input=True, **small)
    with pytest.raises(ValueError, match="needs .*'none' or 'adaptor', got .*condition_feature_mode='trajectory_attention'"):
        ExtDMUNet3DModel(motion_prior_input=True, motion_prior="constant_velocity", condition_feature_mode="trajectory_attention",
                         motion_embedding_channels=8, **small)


def test_motion_prior_must_be_known_and_needs_two_observed_frames():
    small = dict(num_pred_frames=2, cond_feature_channels=8, base_channels=8, channel_mults=(1, 2), attention_heads=1,
                 attention_head_dim=8)
    with pytest.raises(ValueError, match="`motion_prior` must be None or one of \\('constant_velocity', "
                                         "'constant_velocity_reflected'\\).*got 'linear'"):
        ExtDMUNet3DModel(num_cond_frames=2, motion_prior="linear", **small)
    with pytest.raises(ValueError, match="`motion_prior` must be None.*with num_cond_frames=1"):
        ExtDMUNet3DModel(num_cond_frames=1, motion_prior="constant_velocity", **small)
    # the condition built outside a pipeline checks the same, and needs the window's length for the guess
    autoencoder, video = _pipeline(4.0).flow_autoencoder, torch.rand(1, 3, 3, 32, 32)
    with pytest.raises(ValueError, match="`motion_prior` must be None or one of .*got 'linear' with num_cond_frames=3"):
        encode_condition(autoencoder, video, 3, 3, motion_prior="linear", num_pred_frames=2)
    with pytest.raises(ValueError, match="`num_pred_frames` must be given with `motion_prior` 'constant_velocity', got None"):
        encode_condition(autoencoder, video, 3, 3, motion_prior="constant_velocity")


def test_reflected_centres_bounce_between_the_frames_edges():
    # one region of standard deviation 0.2 along x and 0.1 along y: with extent 2 its centre stays in [-0.6, 0.6]
    # along x and [-0.8, 0.8] along y
    covar = torch.diag(torch.tensor([0.04, 0.01])).view(1, 1, 2, 2)
    x = torch.tensor([0.0, 0.5, 0.6, 0.7, 1.2, 1.9, 2.5, -0.7, -1.9])
    shift = torch.stack([x, torch.zeros_like(x)], dim=-1).view(1, -1, 1, 2)
    folded = _reflect_into_frame(shift, covar, 2.0)[0, :, 0, 0]
    torch.testing.assert_close(folded, torch.tensor([0.0, 0.5, 0.6, 0.5, 0.0, -0.5, 0.1, -0.5, 0.5]), rtol=0, atol=1e-6)
    y = _reflect_into_frame(shift.flip(-1), covar, 2.0)[0, :, 0, 1]
    torch.testing.assert_close(y, torch.tensor([0.0, 0.5, 0.6, 0.7, 0.4, -0.3, -0.7, -0.7, 0.3]), rtol=0, atol=1e-6)


def test_the_reflected_prior_keeps_what_the_unbounded_one_keeps_inside_the_frame():
    video = torch.rand(1, 5, 3, 32, 32)
    with torch.no_grad():
        unbounded = _pipeline(4.0, "constant_velocity").encode_condition(video).prior_motion
        pipe = _pipeline(4.0, "constant_velocity_reflected")
        reflected = pipe.encode_condition(video).prior_motion
        regions = pipe.flow_autoencoder.encode(video[:, :3], video[:, 2]).region_params
        previous, last = regions.frame(1, 3), regions.frame(2, 3)
        expected = pipe.flow_autoencoder.extrapolate(video[:, 2], previous, last, 2, reflect_extent=1.25)
        far = pipe.flow_autoencoder.extrapolate(video[:, 2], _with_shift(last, last.shift - 1.0), last, 2, reflect_extent=1.25)
        far_unbounded = pipe.flow_autoencoder.extrapolate(video[:, 2], _with_shift(last, last.shift - 1.0), last, 2)
    torch.testing.assert_close(pipe.motion_to_output(reflected)[:, :, :2], expected.optical_flow, rtol=1e-5, atol=1e-5)
    assert unbounded.shape == reflected.shape
    assert not torch.allclose(far.optical_flow, far_unbounded.optical_flow, atol=1e-3)  # a step of half the frame bounces
