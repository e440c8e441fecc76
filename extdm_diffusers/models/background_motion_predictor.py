"""Background motion predictor: one global 3x3 transform between a source and a driving frame."""

from __future__ import annotations

import torch
from torch import nn

from .autoencoder_blocks import HourglassEncoder

# Number of predicted parameters, and the identity they start from, per background motion type.
_BACKGROUND_TYPES = {
    "zero": None,
    "shift": [0.0, 0.0],
    "affine": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    "perspective": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
}


class BackgroundMotionPredictor(nn.Module):
    def __init__(self, block_expansion: int, num_channels: int, max_features: int, num_blocks: int, bg_type: str = "zero"):
        super().__init__()
        if bg_type not in _BACKGROUND_TYPES:
            raise ValueError(f"`bg_type` must be one of {sorted(_BACKGROUND_TYPES)}, got {bg_type!r}")
        self.bg_type = bg_type
        identity = _BACKGROUND_TYPES[bg_type]
        if identity is not None:
            self.encoder = HourglassEncoder(block_expansion, num_channels * 2, num_blocks, max_features)
            in_features = min(max_features, block_expansion * (2**num_blocks))
            # Starts at the identity transform so that early training does not move the background.
            self.fc = nn.Linear(in_features, len(identity))
            nn.init.zeros_(self.fc.weight)
            with torch.no_grad():
                self.fc.bias.copy_(torch.tensor(identity))

    def forward(self, source: torch.Tensor, driving: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3) transforms taking driving-frame coordinates to source-frame coordinates."""
        b = source.shape[0]
        transform = torch.eye(3, device=source.device, dtype=source.dtype).repeat(b, 1, 1)
        if self.bg_type == "zero":
            return transform
        prediction = self.fc(self.encoder(torch.cat([source, driving], dim=1))[-1].mean(dim=(2, 3)))
        if self.bg_type == "shift":
            transform[:, :2, 2] = prediction
        else:
            transform[:, :2, :] = prediction[:, :6].view(b, 2, 3)
            if self.bg_type == "perspective":
                transform[:, 2, :2] = prediction[:, 6:]
        return transform
