"""Trajectory cross-attention (the BAIR model's condition path): the embedded noisy future motion queries
the observed frames' features, and the result is fused into the future frames' features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class TrajectoryCrossAttention(nn.Module):
    def __init__(self, channels: int, num_observed: int, heads: int = 8):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.num_observed = num_observed
        self.heads = heads
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)
        self.fuser = nn.Conv3d(channels * 2, channels, 1)

    def forward(self, future_motion: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``future_motion``: (B, C, P, 2h, 2w) embedded noisy motion; ``features``: (B, C, M + P, h, w).
        Returns the future frames' fused features, (B, C, P, h, w)."""
        observed, future = features[:, :, : self.num_observed], features[:, :, self.num_observed :]
        p, h, w = future.shape[2:]
        query = rearrange(F.max_pool3d(future_motion, (1, 2, 2), (1, 2, 2)), "b c p h w -> b (p h w) c")
        memory = rearrange(observed, "b c m h w -> b (m h w) c")
        # ReLU after every projection, as the original's multi-head attention op
        q, k, v = (F.relu(proj(t)) for proj, t in ((self.to_q, query), (self.to_k, memory), (self.to_v, memory)))
        q, k, v = (rearrange(t, "b n (heads d) -> b heads n d", heads=self.heads) for t in (q, k, v))
        attended = rearrange(F.scaled_dot_product_attention(q, k, v), "b heads n d -> b n (heads d)")
        attended = rearrange(F.relu(self.to_out(attended)), "b (p h w) c -> b c p h w", p=p, h=h, w=w)
        return self.fuser(torch.cat([future, attended], dim=1))
