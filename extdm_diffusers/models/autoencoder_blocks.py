"""Convolutional building blocks of the flow autoencoder (MRAA/FOMM family) and the coordinate helpers
its region, flow and generator modules share.

Module and parameter names follow the MRAA layout (``conv``, ``norm``, ``down_blocks``...) so that original
checkpoints map onto them one to one.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List

import torch
import torch.nn.functional as F
from torch import nn


def make_coordinate_grid(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """A (height, width, 2) grid of (x, y) coordinates in [-1, 1], the convention of ``grid_sample``."""
    x = torch.arange(width, device=device, dtype=dtype)
    y = torch.arange(height, device=device, dtype=dtype)
    x = 2 * (x / (width - 1)) - 1
    y = 2 * (y / (height - 1)) - 1
    return torch.stack([x.view(1, -1).expand(height, width), y.view(-1, 1).expand(height, width)], dim=-1)


def inverse_2x2(matrices: torch.Tensor) -> torch.Tensor:
    """Batched inverse of 2x2 matrices; low-precision inputs are inverted in float32 (linalg has no bf16/fp16)."""
    if matrices.dtype in (torch.float32, torch.float64):
        return torch.inverse(matrices)
    return torch.inverse(matrices.float()).to(matrices.dtype)


def region_to_gaussian(center: torch.Tensor, covar, height: int, width: int) -> torch.Tensor:
    """Gaussian-like heatmaps (..., height, width) for regions with ``center`` (..., 2) and covariance
    ``covar`` (..., 2, 2), or a scalar variance."""
    grid = make_coordinate_grid(height, width, device=center.device, dtype=center.dtype)
    diff = grid - center[..., None, None, :]  # (..., h, w, 2)
    if isinstance(covar, (float, int)):
        return torch.exp(-0.5 * (diff**2).sum(-1) / covar)
    covar_inverse = inverse_2x2(covar)[..., None, None, :, :]
    under_exp = diff.unsqueeze(-2) @ covar_inverse @ diff.unsqueeze(-1)
    return torch.exp(-0.5 * under_exp[..., 0, 0])


def to_homogeneous(coordinates: torch.Tensor) -> torch.Tensor:
    return torch.cat([coordinates, torch.ones_like(coordinates[..., :1])], dim=-1)


def from_homogeneous(coordinates: torch.Tensor) -> torch.Tensor:
    return coordinates[..., :2] / coordinates[..., 2:3]


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (the same parameters, buffers and state-dict keys) that, inside ``batch_norm_per_call``,
    normalises each of the equal parts of its batch by that part's own statistics and updates the running ones
    part after part: what that many separate calls would compute, bit for bit, while the layers between the norms
    see one batch (the region predictor's three training calls read each weight once instead of three times)."""

    parts = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parts == 1 or not self.training:
            return super().forward(x)
        if x.shape[0] % self.parts:
            raise ValueError(f"a batch of {x.shape[0]} cannot be {self.parts} equal calls' batches")
        return torch.cat([super(BatchNorm2d, self).forward(part) for part in x.chunk(self.parts)])


def normalises_per_call(module: nn.Module) -> bool:
    """Whether every batch norm in ``module`` is a ``BatchNorm2d``, which ``batch_norm_per_call`` can split (an
    ``nn.SyncBatchNorm`` from ``convert_sync_batchnorm`` would normalise the parts together)."""
    return all(type(m) is BatchNorm2d for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


@contextlib.contextmanager
def batch_norm_per_call(module: nn.Module, parts: int) -> Iterator[None]:
    """Within the block, ``module``'s batch norms treat a batch as ``parts`` calls' batches stacked along the batch
    (see ``BatchNorm2d``); ``module`` must pass ``normalises_per_call``."""
    if not normalises_per_call(module):
        raise ValueError("`module` holds batch norms other than autoencoder_blocks.BatchNorm2d; they cannot "
                         "normalise each call's part of a batch by itself")
    norms = [m for m in module.modules() if isinstance(m, BatchNorm2d)]
    for norm in norms:
        norm.parts = parts
    try:
        yield
    finally:
        for norm in norms:
            norm.parts = 1


class ResBlock2d(nn.Module):
    """Pre-activation residual block that keeps the resolution."""

    def __init__(self, channels: int, kernel_size=3, padding=1):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=padding)
        self.norm1 = BatchNorm2d(channels, affine=True)
        self.norm2 = BatchNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class SameBlock2d(nn.Module):
    """Conv, batch norm, ReLU at the same resolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.norm = BatchNorm2d(out_channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class DownBlock2d(SameBlock2d):
    """``SameBlock2d`` followed by 2x average pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(super().forward(x), kernel_size=2)


class UpBlock2d(SameBlock2d):
    """2x nearest upsampling followed by ``SameBlock2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.interpolate(x, scale_factor=2.0))


def _hourglass_width(block_expansion: int, max_features: int, level: int) -> int:
    return min(max_features, block_expansion * (2**level))


class HourglassEncoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock2d(
                in_features if i == 0 else _hourglass_width(block_expansion, max_features, i),
                _hourglass_width(block_expansion, max_features, i + 1),
            )
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.up_blocks = nn.ModuleList(
            UpBlock2d(
                (1 if i == num_blocks - 1 else 2) * _hourglass_width(block_expansion, max_features, i + 1),
                _hourglass_width(block_expansion, max_features, i),
            )
            for i in reversed(range(num_blocks))
        )
        self.out_filters = block_expansion + in_features

    def forward(self, skips: List[torch.Tensor]) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net-like encoder/decoder with concatenated skips."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class AntiAliasDownsample2d(nn.Module):
    """Gaussian blur then strided subsampling: band-limited downscaling by ``scale`` (< 1)."""

    def __init__(self, channels: int, scale: float):
        super().__init__()
        self.scale = scale
        self.stride = int(1 / scale)
        sigma = (1 / scale - 1) / 2
        kernel_size = 2 * round(sigma * 4) + 1
        self.pad_before = kernel_size // 2
        self.pad_after = self.pad_before - 1 if kernel_size % 2 == 0 else self.pad_before
        coords = torch.arange(kernel_size, dtype=torch.float32) - (kernel_size - 1) / 2
        gauss = torch.exp(-(coords**2) / (2 * sigma**2))
        kernel = gauss[:, None] * gauss[None, :]
        kernel = kernel / kernel.sum()
        # A fixed kernel, but kept in the state dict as in the original checkpoints.
        self.register_buffer("weight", kernel.expand(channels, 1, kernel_size, kernel_size).clone())
        self.groups = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return x
        out = F.pad(x, (self.pad_before, self.pad_after, self.pad_before, self.pad_after))
        out = F.conv2d(out, self.weight.to(out.dtype), groups=self.groups)
        return out[:, :, :: self.stride, :: self.stride]


__all__ = [
    "make_coordinate_grid",
    "region_to_gaussian",
    "ResBlock2d",
    "SameBlock2d",
    "DownBlock2d",
    "UpBlock2d",
    "Hourglass",
    "HourglassEncoder",
    "AntiAliasDownsample2d",
]
