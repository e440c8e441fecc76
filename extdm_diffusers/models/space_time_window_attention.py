"""Space-time window attention: 3D Swin-style multi-head self-attention inside (t, h, w) windows, with
rotary embedding over the window's tokens and a learned relative position bias; optionally on windows
shifted by half their size (with the Swin attention mask)."""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .unet_blocks import ChannelLayerNorm, RotaryEmbedding

Size3 = Tuple[int, int, int]


def fit_window(size: Size3, window: Size3, shift: Size3) -> Tuple[Size3, Size3]:
    """Windows no larger than the input; no shift along an axis the window covers whole."""
    window = tuple(s if s <= w else w for s, w in zip(size, window))
    shift = tuple(0 if s <= w else sh for s, w, sh in zip(size, window, shift))
    return window, shift


def partition_windows(x: torch.Tensor, window: Size3) -> torch.Tensor:
    """(B, D, H, W, C) -> (B * num_windows, window volume, C)."""
    b, d, h, w, c = x.shape
    x = x.view(b, d // window[0], window[0], h // window[1], window[1], w // window[2], window[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window[0] * window[1] * window[2], c)


def merge_windows(windows: torch.Tensor, window: Size3, b: int, d: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``partition_windows``."""
    x = windows.view(b, d // window[0], h // window[1], w // window[2], window[0], window[1], window[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


@lru_cache(maxsize=64)
def _shifted_window_mask(d: int, h: int, w: int, window: Size3, shift: Size3, device: torch.device) -> torch.Tensor:
    """(num_windows, N, N) additive mask: -100 between tokens that the cyclic shift brought together.
    Cached per device, so that denoising steps do not copy it to the accelerator again."""
    labels = torch.zeros(1, d, h, w, 1)
    count = 0
    bands = [(slice(-ws), slice(-ws, -sh), slice(-sh, None)) for ws, sh in zip(window, shift)]
    for sd in bands[0]:
        for sh in bands[1]:
            for sw in bands[2]:
                labels[:, sd, sh, sw, :] = count
                count += 1
    labels = partition_windows(labels, window).squeeze(-1)
    diff = labels.unsqueeze(1) - labels.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0).to(device)


def relative_position_index(window: Size3) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in window], indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    relative = relative + torch.tensor([s - 1 for s in window])
    relative = relative * torch.tensor([(2 * window[1] - 1) * (2 * window[2] - 1), 2 * window[2] - 1, 1])
    return relative.sum(-1)


class SpaceTimeWindowAttention(nn.Module):
    """Residual, pre-normalised window attention on (B, C, T, H, W)."""

    def __init__(
        self,
        channels: int,
        window_size: Size3,
        shift_size: Size3,
        heads: int,
        head_dim: int,
        rotary_emb: Optional[RotaryEmbedding],
    ):
        super().__init__()
        if not all(0 <= s < w for s, w in zip(shift_size, window_size)):
            raise ValueError(f"`shift_size` {shift_size} must lie in [0, window_size) for window {window_size}")
        self.window_size = tuple(window_size)
        self.shift_size = tuple(shift_size)
        self.heads = heads
        self.head_dim = head_dim
        self.norm = ChannelLayerNorm(channels)
        self.to_qkv = nn.Linear(channels, heads * head_dim * 3, bias=False)
        self.to_out = nn.Linear(heads * head_dim, channels)
        volume = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(volume, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(self.window_size), persistent=False)
        self.rotary_emb = rotary_emb

    def _attend(self, windows: torch.Tensor, batch: int, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Attention inside (B * nW, N, C) windows."""
        bw, n, _ = windows.shape
        q, k, v = self.to_qkv(windows).view(bw, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.rotary_emb is not None:
            angles = self.rotary_emb.angles(n, windows.device)
            q, k = self.rotary_emb.rotate(q, angles), self.rotary_emb.rotate(k, angles)
        # The original slices the full window's index table even for smaller (clipped) windows; so do we.
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[index].view(n, n, self.heads).permute(2, 0, 1)
        num_windows = bw // batch
        if mask is not None:
            bias = bias.unsqueeze(0) + mask.unsqueeze(1)  # (nW, heads, N, N)
        else:
            bias = bias.unsqueeze(0).expand(num_windows, -1, -1, -1)
        # Windows and heads share one axis so that the (window-dependent) mask broadcasts over the batch.
        q, k, v = (t.reshape(batch, num_windows * self.heads, n, self.head_dim) for t in (q, k, v))
        bias = bias.reshape(1, num_windows * self.heads, n, n).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.head_dim**-0.5)
        out = out.view(bw, self.heads, n, self.head_dim).transpose(1, 2).reshape(bw, n, -1)
        return self.to_out(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        window, shift = fit_window((d, h, w), self.window_size, self.shift_size)
        y = self.norm(x).permute(0, 2, 3, 4, 1)
        pads = [(ws - s % ws) % ws for s, ws in zip((d, h, w), window)]
        y = F.pad(y, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        dp, hp, wp = y.shape[1:4]
        shifted = any(s > 0 for s in shift)
        mask = None
        if shifted:
            y = torch.roll(y, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
            mask = _shifted_window_mask(dp, hp, wp, window, shift, x.device)
        out = self._attend(partition_windows(y, window), b, mask)
        out = merge_windows(out, window, b, dp, hp, wp)
        if shifted:
            out = torch.roll(out, shifts=shift, dims=(1, 2, 3))
        out = out[:, :d, :h, :w].permute(0, 4, 1, 2, 3)
        return x + out
