"""Space-time window attention: 3D Swin-style multi-head self-attention inside (t, h, w) windows, with
rotary embedding over the window's tokens and a learned relative position bias; optionally on windows
shifted by half their size (with the Swin attention mask)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .unet_blocks import (ChannelLayerNorm, RotaryEmbedding, attention_chunk_size, heads_from_projection, in_chunks,
                          tensor_cache)

Size3 = Tuple[int, int, int]


def fit_window(size: Size3, window: Size3, shift: Size3) -> Tuple[Size3, Size3]:
    """Windows no larger than the input; no shift along an axis the window covers whole."""
    window = tuple(s if s <= w else w for s, w in zip(size, window))
    shift = tuple(0 if s <= w else sh for s, w, sh in zip(size, window, shift))
    return window, shift


def partition_windows(x: torch.Tensor, window: Size3) -> torch.Tensor:
    """(B, D, H, W, C) -> (B * num_windows, window volume, C)."""
    return rearrange(x, "b (d wd) (h wh) (w ww) c -> (b d h w) (wd wh ww) c", wd=window[0], wh=window[1], ww=window[2])


def merge_windows(windows: torch.Tensor, window: Size3, b: int, d: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``partition_windows``."""
    return rearrange(windows, "(b d h w) (wd wh ww) c -> b (d wd) (h wh) (w ww) c", b=b, d=d // window[0],
                     h=h // window[1], w=w // window[2], wd=window[0], wh=window[1], ww=window[2])


@tensor_cache
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


@tensor_cache
def _window_token_indices(size: Size3, padded: Size3, window: Size3, shift: Size3, device: torch.device):
    """Token gathers that fuse the cyclic shift and the window partition (and undo them, cropping the padding).

    Returns ``to_windows`` (nW * N,): for each windowed position, its token in the flattened padded grid, and
    ``from_windows`` (d * h * w,): for each token of the unpadded grid, its windowed position."""
    dp, hp, wp = padded
    grid = torch.arange(dp * hp * wp).view(1, dp, hp, wp, 1)
    if any(shift):
        grid = torch.roll(grid, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
    to_windows = partition_windows(grid, window).flatten()
    from_windows = torch.empty_like(to_windows)
    from_windows[to_windows] = torch.arange(to_windows.numel())
    d, h, w = size
    from_windows = from_windows.view(dp, hp, wp)[:d, :h, :w].flatten()
    return to_windows.to(device), from_windows.to(device)


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
        self.chunk_tokens = "auto"  # tokens attended per chunk; see `ExtDMUNet3DModel.set_attention_chunking`

    def _geometry(self, size: Size3):
        """Window, shift, padded size and shift-mask key for inputs of (d, h, w) ``size``."""
        window, shift = fit_window(size, self.window_size, self.shift_size)
        padded = tuple(s + (ws - s % ws) % ws for s, ws in zip(size, window))
        shifted = any(s > 0 for s in shift)
        return window, shift if shifted else (0, 0, 0), padded, (*padded, window, shift) if shifted else None

    def attention_mask(self, size: Size3, batch: int, device, dtype) -> Optional[torch.Tensor]:
        """For shifted windows, the Swin shift mask of ``batch`` inputs of (d, h, w) ``size``, as (B * nW, 1, N, N)
        additive terms; else None. It holds no parameters and does not change across denoising steps:
        ``ExtDMUNet3DModel.prepare_condition`` builds it once per window."""
        _, _, _, mask_key = self._geometry(tuple(size))
        if mask_key is None:
            return None
        mask = _shifted_window_mask(*mask_key, torch.device(device))  # (nW, N, N)
        return mask.to(dtype).unsqueeze(1).repeat(batch, 1, 1, 1)

    def relative_position_bias(self, n: int) -> torch.Tensor:
        """(1, heads, N, N) learned bias of an N-token window. Read in ``forward`` (a gather of heads * N * N
        values), so that hooks on this module see its table."""
        # The original slices the full window's index table even for smaller (clipped) windows; so do we.
        index = self.relative_position_index[:n, :n].reshape(-1)
        # contiguous (heads, N, N): the sum with the shift mask, and SDPA's reads of it, then run over plain memory
        return self.relative_position_bias_table[index].view(n, n, self.heads).permute(2, 0, 1).contiguous().unsqueeze(0)

    def _attend(self, windows: torch.Tensor, bias: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Attention inside (B * nW, N, C) windows, in chunks of windows (see ``attention_chunk_size``). q, k and
        v stay strided views of the projection (``heads_from_projection``; SDPA takes them so).
        ``bias`` (1, heads, N, N) and the shift ``mask`` (B * nW, 1, N, N) are summed per chunk, in cache."""
        bw, n, _ = windows.shape

        def attend(chunk: torch.Tensor, start: int) -> torch.Tensor:
            rows = chunk.shape[0]
            qkv = self.to_qkv(chunk).view(rows, n, 3, self.heads, self.head_dim)
            q, k, v = heads_from_projection(qkv, self.rotary_emb)
            chunk_bias = bias if mask is None else bias + mask[start:start + rows]  # the shift mask is per window
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=chunk_bias.to(q.dtype), scale=self.head_dim**-0.5)
            return self.to_out(out.transpose(1, 2).reshape(rows, n, -1))

        return in_chunks(attend, windows, attention_chunk_size(bw, n, self.heads * self.head_dim, windows, self.chunk_tokens))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``mask``: ``attention_mask`` for this input, built once per window; ``None`` builds it here."""
        b, c, d, h, w = x.shape
        window, shift, padded, mask_key = self._geometry((d, h, w))
        n = window[0] * window[1] * window[2]
        if mask is None and mask_key is not None:
            mask = self.attention_mask((d, h, w), b, x.device, x.dtype)
        bias = self.relative_position_bias(n)
        # channels-last once; the layer norm over channels is then a plain F.layer_norm
        y = self.norm(rearrange(x, "b c d h w -> b d h w c"), channels_last=True)
        pads = [p - s for p, s in zip(padded, (d, h, w))]
        if any(pads):
            y = F.pad(y, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        to_windows, from_windows = _window_token_indices((d, h, w), padded, window, shift, x.device)
        windows = y.view(b, -1, c).index_select(1, to_windows).view(-1, n, c)
        out = self._attend(windows, bias, mask)
        out = out.view(b, -1, c).index_select(1, from_windows)
        return x + rearrange(out, "b (d h w) c -> b c d h w", d=d, h=h, w=w)
