"""Generator of the flow autoencoder: encodes a source frame, warps its features (and, with skips, every
encoder level and the source pixels) with a flow grid, blends with an occlusion map and decodes a frame."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from .autoencoder_blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d


def warp(image: torch.Tensor, flow_grid: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` (N, C, H, W) at ``flow_grid`` (N, h, w, 2), resizing the grid to (H, W) if needed."""
    h, w = image.shape[2:]
    if flow_grid.shape[1:3] != (h, w):
        flow_grid = F.interpolate(flow_grid.permute(0, 3, 1, 2), size=(h, w), mode="bilinear").permute(0, 2, 3, 1)
    return F.grid_sample(image, flow_grid, align_corners=False)


class FrameGenerator(nn.Module):
    def __init__(
        self,
        num_channels: int,
        block_expansion: int,
        max_features: int,
        num_down_blocks: int,
        num_bottleneck_blocks: int,
        skips: bool = False,
    ):
        super().__init__()

        def width(level: int) -> int:
            return min(max_features, block_expansion * (2**level))

        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=7, padding=3)
        self.down_blocks = nn.ModuleList(DownBlock2d(width(i), width(i + 1)) for i in range(num_down_blocks))
        self.up_blocks = nn.ModuleList(
            UpBlock2d(width(num_down_blocks - i), width(num_down_blocks - i - 1)) for i in range(num_down_blocks)
        )
        self.bottleneck = nn.Sequential()
        for i in range(num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(width(num_down_blocks)))
        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=7, padding=3)
        self.skips = skips
        self.feature_channels = width(num_down_blocks)

    @apply_forward_hook  # an accelerate hook on the generator (device_map, offloading) wraps `forward` only
    def encode(self, image: torch.Tensor) -> List[torch.Tensor]:
        """Features of every encoder level, the bottleneck input last."""
        features = [self.first(image)]
        for block in self.down_blocks:
            features.append(block(features[-1]))
        return features

    @staticmethod
    def _warp_and_blend(
        skip: torch.Tensor, flow_grid: torch.Tensor, occlusion: Optional[torch.Tensor], previous: Optional[torch.Tensor]
    ) -> torch.Tensor:
        warped = warp(skip, flow_grid)
        if occlusion is None:
            return warped
        if occlusion.shape[2:] != warped.shape[2:]:
            occlusion = F.interpolate(occlusion, size=warped.shape[2:], mode="bilinear")
        if previous is None:
            return warped * occlusion
        return warped * occlusion + previous * (1 - occlusion)

    @apply_forward_hook
    def decode(
        self,
        source_image: torch.Tensor,
        source_features: List[torch.Tensor],
        flow_grid: torch.Tensor,
        occlusion: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The generated frame and the source warped by the flow alone (``deformed``)."""
        out = self._warp_and_blend(source_features[-1], flow_grid, occlusion, None)
        out = self.bottleneck(out)
        for i, block in enumerate(self.up_blocks):
            if self.skips:
                out = self._warp_and_blend(source_features[-(i + 1)], flow_grid, occlusion, out)
            out = block(out)
        if self.skips:
            out = self._warp_and_blend(source_features[0], flow_grid, occlusion, out)
        out = torch.sigmoid(self.final(out))
        if self.skips:
            out = self._warp_and_blend(source_image, flow_grid, occlusion, out)
        return out, warp(source_image, flow_grid)
