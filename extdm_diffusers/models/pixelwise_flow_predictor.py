"""Pixel-wise flow predictor: turns sparse per-region motions into a dense flow grid and an occlusion map.

Each region k (plus the background) proposes a warp of the source; an hourglass over the heatmap
differences and the warped sources predicts per-pixel softmax weights to mix the proposals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput
from torch import nn

from .autoencoder_blocks import AntiAliasDownsample2d, Hourglass, from_homogeneous, inverse_2x2, make_coordinate_grid, region_to_gaussian, to_homogeneous
from .region_predictor import RegionParams


@dataclass
class PixelwiseFlowPredictorOutput(BaseOutput):
    """optical_flow: (B, h, w, 2) sampling grid (x, y in [-1, 1]). occlusion_map: (B, 1, h, w) in [0, 1], or
    None when the predictor estimates none."""

    optical_flow: torch.Tensor = None
    occlusion_map: Optional[torch.Tensor] = None


class PixelwiseFlowPredictor(nn.Module):
    def __init__(
        self,
        block_expansion: int,
        num_blocks: int,
        max_features: int,
        num_regions: int,
        num_channels: int,
        estimate_occlusion_map: bool = False,
        scale_factor: float = 1.0,
        region_var: float = 0.01,
        use_covar_heatmap: bool = False,
        use_deformed_source: bool = True,
        revert_axis_swap: bool = False,
    ):
        super().__init__()
        in_features = (num_regions + 1) * (num_channels * int(use_deformed_source) + 1)
        self.hourglass = Hourglass(block_expansion, in_features, num_blocks, max_features)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_regions + 1, kernel_size=7, padding=3)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=7, padding=3) if estimate_occlusion_map else None
        self.num_regions = num_regions
        self.scale_factor = scale_factor
        self.region_var = region_var
        self.use_covar_heatmap = use_covar_heatmap
        self.use_deformed_source = use_deformed_source
        self.revert_axis_swap = revert_axis_swap
        if scale_factor != 1:
            self.down = AntiAliasDownsample2d(num_channels, scale_factor)

    def heatmap_representation(self, h: int, w: int, driving: RegionParams, source: RegionParams) -> torch.Tensor:
        """Difference of driving and source region Gaussians, with a zero background channel: (B, K+1, 1, h, w)."""
        gaussian_driving = region_to_gaussian(driving.shift, driving.covar if self.use_covar_heatmap else self.region_var, h, w)
        gaussian_source = region_to_gaussian(source.shift, source.covar if self.use_covar_heatmap else self.region_var, h, w)
        heatmap = gaussian_driving - gaussian_source
        heatmap = torch.cat([torch.zeros_like(heatmap[:, :1]), heatmap], dim=1)
        return heatmap.unsqueeze(2)

    def sparse_motions(
        self, h: int, w: int, driving: RegionParams, source: RegionParams, background: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Per-region sampling grids driving -> source, background first: (B, K+1, h, w, 2)."""
        b = source.shift.shape[0]
        identity = make_coordinate_grid(h, w, device=source.shift.device, dtype=source.shift.dtype)
        coordinates = identity.view(1, 1, h, w, 2) - driving.shift.view(b, self.num_regions, 1, 1, 2)
        if driving.affine is not None:
            affine = source.affine @ inverse_2x2(driving.affine)
            if self.revert_axis_swap:
                # SVD may flip both axes of a region; undo it so regions do not rotate by 180 degrees.
                affine = affine * torch.sign(affine[:, :, 0:1, 0:1])
            coordinates = (affine[:, :, None, None] @ coordinates.unsqueeze(-1)).squeeze(-1)
        driving_to_source = coordinates + source.shift.view(b, self.num_regions, 1, 1, 2)

        background_grid = identity.expand(b, 1, h, w, 2)
        if background is not None:
            background_grid = to_homogeneous(background_grid)
            background_grid = (background.view(b, 1, 1, 1, 3, 3) @ background_grid.unsqueeze(-1)).squeeze(-1)
            background_grid = from_homogeneous(background_grid)
        return torch.cat([background_grid, driving_to_source], dim=1)

    def forward(
        self,
        source_image: torch.Tensor,
        driving: RegionParams,
        source: RegionParams,
        background: Optional[torch.Tensor] = None,
        source_repeats: int = 1,
    ) -> PixelwiseFlowPredictorOutput:
        """The dense motion: ``optical_flow`` and, if estimated, ``occlusion_map``.

        ``source_repeats``: each source image serves that many consecutive driving frames (it is downscaled
        once, then repeated), and ``source`` region params are given per driving frame.
        """
        if self.scale_factor != 1:
            source_image = self.down(source_image)
        source_image = source_image.repeat_interleave(source_repeats, dim=0)
        b, c, h, w = source_image.shape
        heatmap = self.heatmap_representation(h, w, driving, source)
        motions = self.sparse_motions(h, w, driving, source, background)
        if self.use_deformed_source:
            k = self.num_regions + 1
            repeated = source_image.unsqueeze(1).expand(b, k, c, h, w).reshape(b * k, c, h, w)
            deformed = F.grid_sample(repeated, motions.reshape(b * k, h, w, 2), align_corners=False)
            predictor_input = torch.cat([heatmap, deformed.view(b, k, c, h, w)], dim=2)
        else:
            predictor_input = heatmap
        prediction = self.hourglass(predictor_input.view(b, -1, h, w))
        mask = F.softmax(self.mask(prediction), dim=1).unsqueeze(-1)  # (b, k+1, h, w, 1)
        occlusion = None if self.occlusion is None else torch.sigmoid(self.occlusion(prediction))
        return PixelwiseFlowPredictorOutput(optical_flow=(motions * mask).sum(dim=1), occlusion_map=occlusion)
