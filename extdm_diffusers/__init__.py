"""ExtDM (CVPR 2024) video prediction for Hugging Face diffusers."""

__version__ = "0.1.0"
