from .flow_autoencoder import (
    FlowAutoencoder,
    FlowAutoencoderDecoderOutput,
    FlowAutoencoderEncoderOutput,
    FlowAutoencoderOutput,
    compose_motion,
)
from .region_predictor import RegionParams
from .unet_3d_extdm import ExtDMUNet3DCondition, ExtDMUNet3DModel, ExtDMUNet3DOutput

__all__ = [
    "compose_motion",
    "FlowAutoencoder",
    "FlowAutoencoderOutput",
    "FlowAutoencoderEncoderOutput",
    "FlowAutoencoderDecoderOutput",
    "RegionParams",
    "ExtDMUNet3DModel",
    "ExtDMUNet3DOutput",
    "ExtDMUNet3DCondition",
]
