"""Region predictor: soft heatmaps of K object parts, summarised as a centre (shift) and an affine shape.

The affine part is either the square root of each heatmap's covariance (PCA, via SVD) or regressed by a
convolution head (FOMM-style jacobians).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from diffusers.utils import BaseOutput
from torch import nn

from .autoencoder_blocks import AntiAliasDownsample2d, Hourglass, make_coordinate_grid


@dataclass
class RegionParams(BaseOutput):
    """Per-region parameters, coordinates in [-1, 1].

    shift: (B, K, 2) region centres (x, y). covar: (B, K, 2, 2). affine: (B, K, 2, 2) region shape.
    heatmap: (B, K, h, w) softmax heatmaps. u, d: the SVD factors of ``covar`` (PCA-based predictor only).
    """

    shift: torch.Tensor = None
    covar: Optional[torch.Tensor] = None
    affine: Optional[torch.Tensor] = None
    heatmap: Optional[torch.Tensor] = None
    u: Optional[torch.Tensor] = None
    d: Optional[torch.Tensor] = None

    def repeat_interleave(self, repeats: int) -> "RegionParams":
        """The same parameters for ``repeats`` consecutive batch items each (e.g. one reference, T frames)."""
        return RegionParams(
            **{k: v.repeat_interleave(repeats, dim=0) for k, v in self.items() if v is not None}
        )

    def chunk(self, chunks: int) -> Tuple["RegionParams", ...]:
        """The parameters of ``chunks`` equal batches stacked along the batch (one pass over several images)."""
        parts = {k: v.chunk(chunks) for k, v in self.items() if v is not None}
        return tuple(RegionParams(**{k: v[i] for k, v in parts.items()}) for i in range(chunks))

    def frame(self, index: int, num_frames: int) -> "RegionParams":
        """Of parameters batched over (B·num_frames) frames video by video, those of frame ``index`` of each video."""
        return RegionParams(**{k: v.unflatten(0, (-1, num_frames))[:, index] for k, v in self.items() if v is not None})


def covariance_square_root(covar: torch.Tensor):
    """U, D and U @ sqrt(D) of symmetric 2x2 covariances (B, K, 2, 2).

    The SVD runs on the CPU in float32, as in the original: LAPACK fixes the signs of the singular vectors
    that trained checkpoints depend on, and a batch of 2x2 matrices costs nothing there. It stays differentiable,
    as the original's ``torch.svd``: in training, the equivariance and reconstruction losses reach the region
    predictor through the affine shapes.
    """
    shape = covar.shape
    u, s, _ = torch.linalg.svd(covar.reshape(-1, 2, 2).float().cpu())
    u = u.to(device=covar.device, dtype=covar.dtype)
    d = torch.diag_embed(s.to(device=covar.device, dtype=covar.dtype) ** 0.5)
    return u, d, (u @ d).view(shape)


class RegionPredictor(nn.Module):
    def __init__(
        self,
        block_expansion: int,
        num_regions: int,
        num_channels: int,
        max_features: int,
        num_blocks: int,
        temperature: float,
        estimate_affine: bool = False,
        scale_factor: float = 1.0,
        pca_based: bool = False,
        pad: int = 3,
    ):
        super().__init__()
        self.predictor = Hourglass(block_expansion, num_channels, num_blocks, max_features)
        self.regions = nn.Conv2d(self.predictor.out_filters, num_regions, kernel_size=7, padding=pad)
        if estimate_affine and not pca_based:
            self.jacobian = nn.Conv2d(self.predictor.out_filters, 4, kernel_size=7, padding=pad)
            nn.init.zeros_(self.jacobian.weight)
            with torch.no_grad():
                self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]))
        else:
            self.jacobian = None
        self.temperature = temperature
        self.scale_factor = scale_factor
        self.pca_based = pca_based
        self.estimate_affine = estimate_affine
        if scale_factor != 1:
            self.down = AntiAliasDownsample2d(num_channels, scale_factor)

    def forward(self, image: torch.Tensor) -> RegionParams:
        if self.scale_factor != 1:
            image = self.down(image)
        feature_map = self.predictor(image)
        logits = self.regions(feature_map)
        b, k, h, w = logits.shape
        heatmap = F.softmax(logits.view(b, k, -1) / self.temperature, dim=2).view(b, k, h, w)

        grid = make_coordinate_grid(h, w, device=heatmap.device, dtype=heatmap.dtype)  # (h, w, 2)
        weights = heatmap.unsqueeze(-1)
        shift = (weights * grid).sum(dim=(2, 3))  # (b, k, 2)
        covar = affine = u = d = None
        if self.jacobian is not None:
            jacobian_map = self.jacobian(feature_map).view(b, 1, 4, h, w)
            affine = (heatmap.unsqueeze(2) * jacobian_map).view(b, k, 4, -1).sum(-1).view(b, k, 2, 2)
            covar = affine @ affine.transpose(-1, -2)
        elif self.pca_based:
            centered = grid - shift[:, :, None, None, :]  # (b, k, h, w, 2)
            covar = ((centered.unsqueeze(-1) @ centered.unsqueeze(-2)) * weights.unsqueeze(-1)).sum(dim=(2, 3))
            u, d, affine = covariance_square_root(covar)
        return RegionParams(shift=shift, covar=covar, affine=affine, heatmap=heatmap, u=u, d=d)
