"""Training losses against the original ExtDM code (fixture: fixtures/training_losses_reference.*)."""

import json

import pytest
import torch

from extdm_diffusers import ExtDMDDIMScheduler
from extdm_diffusers.conversion import flow_autoencoder_from_original, unet_from_original
from extdm_diffusers.models.autoencoder_blocks import make_coordinate_grid
from extdm_diffusers.training import (
    EquivarianceTransform,
    FlowAutoencoderLoss,
    ImagePyramid,
    VGG19PerceptualFeatures,
    denoising_loss,
    random_transform,
)
from reference_cases import FIXTURES, load_case, relative_error, split_autoencoder
from fixture_weights import fixture_weights
from safetensors.torch import load_file

TOLERANCE = 1e-5
GRAD_TOLERANCE = 1e-4  # gradients go through SVD backward and more reductions in a different order


@pytest.fixture(scope="module")
def reference():
    meta = json.loads((FIXTURES / "training_losses_reference.json").read_text())
    return meta, load_file(str(FIXTURES / "training_losses_reference.safetensors"))


def reference_vgg(meta) -> VGG19PerceptualFeatures:
    """The fixture's VGG19: fixture_weights over torchvision's vgg19 features[:30] names and shapes."""
    vgg = VGG19PerceptualFeatures(weights=None)
    sd = fixture_weights(meta["vgg_manifest"], meta["vgg_seed"])
    vgg.features.load_state_dict({k[len("features."):]: v for k, v in sd.items()})
    return vgg


def reference_transform(t) -> EquivarianceTransform:
    return EquivarianceTransform(t["inputs.theta"], t["inputs.control_params"], make_coordinate_grid(5, 5).reshape(-1, 2))


def reference_loss(meta) -> FlowAutoencoderLoss:
    train = meta["train_params"]
    loss = FlowAutoencoderLoss(
        scales=train["scales"],
        perceptual_weights=train["loss_weights"]["perceptual"],
        vgg_weights=None,
        equivariance_shift_weight=train["loss_weights"]["equivariance_shift"],
        equivariance_affine_weight=train["loss_weights"]["equivariance_affine"],
    )
    loss.vgg = reference_vgg(meta)
    return loss


def autoencoder(meta):
    ae_meta, _, sd = load_case(meta["autoencoder_case"])
    return flow_autoencoder_from_original(split_autoencoder(sd), ae_meta["config"])


# -- parity with the original ---------------------------------------------------------------------------------
def test_image_pyramid_matches_original(reference):
    _, t = reference
    pyramid = ImagePyramid([1, 0.5, 0.25, 0.125], 3)
    for scale, level in zip(pyramid.scales, pyramid(t["inputs.pyramid_image"])):
        expected = t[f"outputs.pyramid.{scale:g}"]
        assert level.shape == expected.shape
        assert relative_error(level, expected) < TOLERANCE


def test_vgg_features_match_original(reference):
    meta, t = reference
    with torch.no_grad():
        features = reference_vgg(meta)(t["inputs.pyramid_image"][:, :, :16, :16])
    for i, f in enumerate(features):
        assert f.shape == t[f"outputs.vgg.{i}"].shape
        assert relative_error(f, t[f"outputs.vgg.{i}"]) < TOLERANCE, i


def test_transform_matches_original(reference):
    _, t = reference
    transform = reference_transform(t)
    coords = t["inputs.coordinates"]
    assert relative_error(transform.warp_coordinates(coords), t["outputs.warp_coordinates"]) < TOLERANCE
    # closed form vs the original's autograd
    assert relative_error(transform.jacobian(coords), t["outputs.jacobian"]) < TOLERANCE
    assert relative_error(transform.warp_image(t["inputs.driving"]), t["outputs.transformed_frame"]) < TOLERANCE


def test_autoencoder_losses_match_original(reference):
    """ReconstructionModel.forward in train mode (batch statistics), fixed transform, gradients included."""
    meta, t = reference
    model = autoencoder(meta).train()
    criterion = reference_loss(meta)
    losses, output = criterion(model, t["inputs.source"], t["inputs.driving"], transform=reference_transform(t), return_output=True)
    assert relative_error(output.prediction, t["outputs.prediction"]) < TOLERANCE
    errors = {k: relative_error(losses[k].detach(), t[f"outputs.{k}"][0]) for k in ("perceptual", "equivariance_shift", "equivariance_affine")}
    assert all(e < TOLERANCE for e in errors.values()), errors
    total = t["outputs.perceptual"] + t["outputs.equivariance_shift"] + t["outputs.equivariance_affine"]
    assert relative_error(losses["loss"].detach(), total[0]) < TOLERANCE

    losses["loss"].backward()
    ours = dict(model.named_parameters())
    renames = {  # original parameter -> ours
        "region_predictor.regions.weight": "region_predictor.regions.weight",
        "region_predictor.predictor.encoder.down_blocks.0.conv.weight": "region_predictor.predictor.encoder.down_blocks.0.conv.weight",
        "bg_predictor.fc.weight": "bg_predictor.fc.weight",
        "generator.final.weight": "generator.final.weight",
    }
    for original, name in renames.items():
        assert name in ours, name
        assert relative_error(ours[name].grad, t[f"outputs.grad.{original}"]) < GRAD_TOLERANCE, original


def test_denoising_loss_matches_original_p_losses(reference):
    """GaussianDiffusion.p_losses (loss_type l2) of the traj_ada_u22 denoiser, denoiser in eval mode."""
    meta, t = reference
    unet_meta, unet_t, sd = load_case(meta["unet_case"])
    unet = unet_from_original(sd, unet_meta["original_module"], **unet_meta["constructor"]).eval()
    with torch.no_grad():
        loss = denoising_loss(
            unet, ExtDMDDIMScheduler(), t["dm.inputs.clean_motion"], unet_t["inputs.cond_frames"], unet_t["inputs.cond_fea"],
            t["dm.inputs.timesteps"], t["dm.inputs.noise"],
        )
    assert relative_error(loss, t["dm.outputs.loss"][0]) < TOLERANCE
