"""Layered distribution adaptor, the component that gives ExtDM its name.

From the features of the M observed frames it extrapolates features for the P future frames: the
features are normalised by their mean and standard deviation, pushed through L residual convolutions
(each layer doubles the extrapolated sequence), re-scaled back to the observed distribution, mixed over
time into P frames by a 1x1 "temporal modulator", and fused into the future frames' features.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from einops import rearrange
from torch import nn

from .unet_blocks import ChannelLayerNorm, FrameConv3d


def adaptor_depth(num_observed: int, num_future: int, num_layers: Optional[int] = None) -> Tuple[int, int]:
    """Number of extrapolation layers L (enough doublings to cover the future frames, unless given) and the
    number of frames they produce, (2^L - 1) * M."""
    if num_layers is None:
        num_layers = max(1, int(math.ceil(math.log2((num_future + 1) / num_observed))))
    return num_layers, (2**num_layers - 1) * num_observed


class DistributionExtrapolator(nn.Module):
    """Normalise, extrapolate with residual convs, re-scale; returns (B, C, (2^L - 1) * M, H, W)."""

    def __init__(
        self, channels: int, num_layers: int, kernel_size: Sequence[int] = (1, 3, 3), zero_init: bool = True, eps: float = 1e-5
    ):
        super().__init__()
        self.eps = eps
        self.predictor_norm = ChannelLayerNorm(channels)
        self.predictor = FrameConv3d(channels, channels, 1)
        padding = tuple(k // 2 for k in kernel_size)
        self.extrapolators = nn.ModuleList(
            FrameConv3d(channels, channels, tuple(kernel_size), padding=padding, bias=False) for _ in range(num_layers)
        )
        if zero_init:  # start as an identity extrapolation
            for conv in self.extrapolators:
                nn.init.zeros_(conv.weight)

    def forward(self, observed: torch.Tensor) -> torch.Tensor:
        num_observed = observed.shape[2]
        x = observed + self.predictor(self.predictor_norm(observed))
        for conv in self.extrapolators:
            # per (sample, channel), unbiased as the original; two passes of plain reductions, which the CPU
            # runs far faster than torch.var_mean over these axes (docs/performance.md)
            mean = x.mean(dim=(2, 3, 4), keepdim=True)
            centered = x - mean
            var = centered.square().sum(dim=(2, 3, 4), keepdim=True) / (x.shape[2:].numel() - 1)
            std = (var + self.eps).sqrt()
            normalised = centered / std
            extrapolated = (normalised + conv(normalised)) * std + mean
            x = torch.cat([x, extrapolated], dim=2)
        return x.split([num_observed, x.shape[2] - num_observed], dim=2)[1]


class DistributionAdaptor(nn.Module):
    """Adapts the future frames of (B, C, M + P, H, W) features with distributions extrapolated from the
    first M (observed) frames; the observed frames pass through unchanged."""

    def __init__(
        self,
        channels: int,
        num_observed: int,
        num_future: int,
        num_layers: Optional[int] = None,
        kernel_size: Sequence[int] = (1, 3, 3),
        zero_init: bool = True,
    ):
        super().__init__()
        self.num_observed = num_observed
        self.num_future = num_future
        num_layers, num_extrapolated = adaptor_depth(num_observed, num_future, num_layers)
        self.extrapolator = DistributionExtrapolator(channels, num_layers, kernel_size, zero_init)
        self.temporal_modulator = nn.Conv2d(channels * num_extrapolated, channels * num_future, 1)
        self.fuser_norm = ChannelLayerNorm(channels * 2)
        self.fuser = FrameConv3d(channels * 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # split, not sliced: the gradient is one cat, not a zero-filled copy of x per slice
        observed, future = x.split([self.num_observed, x.shape[2] - self.num_observed], dim=2)
        extrapolated = self.extrapolator(observed)
        modulated = self.temporal_modulator(rearrange(extrapolated, "b c t h w -> b (t c) h w"))
        modulated = rearrange(modulated, "b (t c) h w -> b c t h w", t=self.num_future)
        fused = torch.cat([modulated, future], dim=1)
        future = self.fuser(self.fuser_norm(fused)) + future
        return torch.cat([observed, future], dim=2)
