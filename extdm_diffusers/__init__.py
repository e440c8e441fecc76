"""ExtDM (CVPR 2024) video prediction for Hugging Face diffusers."""

from .models import (
    ExtDMUNet3DCondition,
    ExtDMUNet3DModel,
    ExtDMUNet3DOutput,
    FlowAutoencoder,
    FlowAutoencoderDecoderOutput,
    FlowAutoencoderEncoderOutput,
    FlowAutoencoderOutput,
    RegionParams,
)
from .pipelines import ExtDMPipeline, ExtDMPipelineOutput
from .schedulers import ExtDMDDIMScheduler, ExtDMDDIMSchedulerOutput

__version__ = "0.1.0"

__all__ = [
    "ExtDMPipeline",
    "ExtDMPipelineOutput",
    "ExtDMDDIMScheduler",
    "ExtDMDDIMSchedulerOutput",
    "ExtDMUNet3DModel",
    "ExtDMUNet3DCondition",
    "ExtDMUNet3DOutput",
    "FlowAutoencoder",
    "FlowAutoencoderOutput",
    "FlowAutoencoderEncoderOutput",
    "FlowAutoencoderDecoderOutput",
    "RegionParams",
]
