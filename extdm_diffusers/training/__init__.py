"""Losses for training the ExtDM models (used by the training scripts and the quick start)."""

from .common import TrainingArgumentError
from .diffusion_loss import denoising_loss
from .flow_autoencoder_losses import (
    PERCEPTUAL_LOSSES,
    VGG19_SLICE_ENDS,
    EquivarianceTransform,
    FlowAutoencoderLoss,
    ImagePyramid,
    VGG19PerceptualFeatures,
    random_transform,
)

__all__ = [
    "TrainingArgumentError",
    "denoising_loss",
    "EquivarianceTransform",
    "FlowAutoencoderLoss",
    "ImagePyramid",
    "VGG19PerceptualFeatures",
    "random_transform",
    "PERCEPTUAL_LOSSES",
    "VGG19_SLICE_ENDS",
]
