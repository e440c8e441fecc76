"""Temporal attention: every spatial position attends over time, with rotary embedding and a T5-style
bucketed relative position bias shared by all temporal attention layers of the U-Net."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .unet_blocks import ChannelLayerNorm, RotaryEmbedding, attention_chunk_size, heads_from_projection, in_chunks


class RelativePositionBias(nn.Module):
    """(heads, T, T) additive attention bias from log-bucketed relative time offsets."""

    def __init__(self, heads: int = 8, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, heads)

    def bucket(self, relative_position: torch.Tensor) -> torch.Tensor:
        half = self.num_buckets // 2
        n = -relative_position
        buckets = (n < 0).long() * half
        n = n.abs()
        max_exact = half // 2
        is_small = n < max_exact
        # clamp(min=1) only keeps log() finite where the small-offset branch is taken anyway
        large = max_exact + (
            torch.log(n.clamp(min=1).float() / max_exact) / math.log(self.max_distance / max_exact) * (half - max_exact)
        ).long()
        large = large.clamp(max=half - 1)
        return buckets + torch.where(is_small, n, large)

    def forward(self, num_frames: int, device=None) -> torch.Tensor:
        positions = torch.arange(num_frames, dtype=torch.long, device=device)
        relative = positions[None, :] - positions[:, None]
        return self.embedding(self.bucket(relative)).permute(2, 0, 1)


class TemporalAttention(nn.Module):
    """Residual attention over the time axis of (B, C, T, H, W).

    As in the original, the block is normalised twice: a channel layer norm whose output also feeds the
    inner residual, then a standard layer norm before the attention itself.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, rotary_emb: Optional[RotaryEmbedding]):
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        self.channel_norm = ChannelLayerNorm(channels)
        self.layer_norm = nn.LayerNorm(channels)
        self.to_qkv = nn.Linear(channels, heads * head_dim * 3, bias=False)
        self.to_out = nn.Linear(heads * head_dim, channels, bias=False)
        self.rotary_emb = rotary_emb
        self.chunk_tokens = "auto"  # tokens attended per chunk; see `ExtDMUNet3DModel.set_attention_chunking`

    def _attend(self, y: torch.Tensor, position_bias: Optional[torch.Tensor]) -> torch.Tensor:
        """(S, T, C) channel-normalised sequences -> attention output plus ``y`` (the inner residual)."""
        s, t, _ = y.shape
        qkv = self.to_qkv(self.layer_norm(y)).view(s, t, 3, self.heads, self.head_dim)
        q, k, v = heads_from_projection(qkv, self.rotary_emb)
        bias = None if position_bias is None else position_bias.unsqueeze(0).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.head_dim**-0.5)
        return self.to_out(out.transpose(1, 2).reshape(s, t, -1)) + y

    def forward(self, x: torch.Tensor, position_bias: Optional[torch.Tensor]) -> torch.Tensor:
        b, c, t, h, w = x.shape
        # one copy into (sequence, time, channel) order; q, k and v stay strided views of the projection
        y = self.channel_norm(rearrange(x, "b c t h w -> (b h w) t c"), channels_last=True)
        step = attention_chunk_size(b * h * w, t, self.heads * self.head_dim, y, self.chunk_tokens)
        out = in_chunks(lambda chunk, _: self._attend(chunk, position_bias), y, step)
        return x + rearrange(out, "(b h w) t c -> b c t h w", b=b, h=h, w=w)
