"""Training the ExtDM models: the losses (used by the training scripts and the quick start) and the scripts'
logic, ``train_flow_ae`` and ``train_dm``, both run by ``loop.train``."""

from .arguments import TrainingArgumentError
from .diffusion_loss import DenoisingLossOutput, denoising_loss
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
    "DenoisingLossOutput",
    "denoising_loss",
    "EquivarianceTransform",
    "FlowAutoencoderLoss",
    "ImagePyramid",
    "VGG19PerceptualFeatures",
    "random_transform",
    "PERCEPTUAL_LOSSES",
    "VGG19_SLICE_ENDS",
]
