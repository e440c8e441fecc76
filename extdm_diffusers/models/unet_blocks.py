"""Small building blocks of the ExtDM 3D U-Net (after lucidrains' video-diffusion-pytorch)."""

from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def tensor_cache(function: Callable) -> Callable:
    """``functools.lru_cache(maxsize=64)`` for pure functions that build constant tensors (rotations, masks,
    gather indices). Tracing (torch.compile, torch.export) bypasses the cache and traces the function: a cache
    filled with a trace's fake tensors would leak them into later calls. The tensors are built outside
    inference mode, so that one cached under ``torch.inference_mode()`` still serves autograd later."""
    cached = functools.lru_cache(maxsize=64)(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():
            return function(*args, **kwargs)
        with torch.inference_mode(False):
            return cached(*args, **kwargs)

    wrapper.cache_clear = cached.cache_clear
    return wrapper


def inplace_allowed() -> bool:
    """Whether layers may overwrite their fresh intermediates (in-place activations, rotary): only without
    autograd, which may have saved them, and not under torch.compile, whose functionalization of in-place
    writes through strided views fails (torch 2.14)."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling()


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channel axis of (B, C, ...) tensors, with a scale and no bias."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """``channels_last``: ``x`` has its channels on the last axis (an attention layer's (..., C) tokens) and
        the output keeps them there."""
        if channels_last:
            return F.layer_norm(x, (x.shape[-1],), self.weight, None, self.eps)
        # F.layer_norm over the channels moved last: the same (x - mean) / sqrt(var + eps) * weight, in one fused
        # kernel instead of torch.var_mean's strided reduction over dim 1 (docs/performance.md), and a free view
        # for the U-Net's channels-last tensors
        return F.layer_norm(x.movedim(1, -1), (x.shape[1],), self.weight, None, self.eps).movedim(-1, 1)


# On the CPU, torch allocates every tensor fresh from the C allocator, which hands large blocks straight to the
# kernel: each then costs a page fault per 4 KiB on first touch, and the attention layers' q/k/v projection of
# a whole input is such a block (docs/performance.md measures it). Attending in chunks of sequences keeps every
# intermediate small (reused memory, in cache); a GPU's caching allocator has no such cost and prefers one
# large kernel, so there the default is not to chunk.
ATTENTION_CHUNK_BYTES = 12 * 2**20


def attention_chunk_size(
    num_sequences: int, sequence_length: int, projection_width: int, x: torch.Tensor, max_tokens: Union[int, str, None]
) -> int:
    """Sequences per chunk for attention over ``num_sequences`` independent sequences.

    ``max_tokens``: tokens per chunk; ``None``: one chunk; ``"auto"``: on the CPU, as many tokens as keep the
    chunk's q/k/v projection (``projection_width`` features each) under ``ATTENTION_CHUNK_BYTES``, elsewhere
    one chunk."""
    if max_tokens == "auto":
        if x.device.type != "cpu":
            return num_sequences
        max_tokens = ATTENTION_CHUNK_BYTES // (3 * projection_width * x.element_size())
    if max_tokens is None:
        return num_sequences
    return max(1, min(num_sequences, int(max_tokens) // sequence_length))


def in_chunks(compute: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, step: int) -> torch.Tensor:
    """``compute(chunk, start)`` over ``x`` split along its first axis into chunks of ``step`` rows (``start``: the
    chunk's first row), concatenated back. Split rather than sliced: the gradient of the chunks is one cat, where
    each slice's gradient would be a zero-filled tensor of the whole ``x``."""
    if step >= x.shape[0]:
        return compute(x, 0)
    return torch.cat([compute(chunk, i * step) for i, chunk in enumerate(x.split(step))])


def check_chunk_tokens(max_tokens: Union[int, str, None]) -> None:
    positive_int = isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0
    if not (max_tokens is None or max_tokens == "auto" or positive_int):
        raise ValueError(f"`max_tokens` must be a positive int, 'auto' or None, got {max_tokens!r}")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the sequence axis (-2) of (..., N, head_dim) tensors.

    Rotates the first ``dim`` features in interleaved pairs with frequencies 1 / 10000^(2i / dim), the
    convention of the ``rotary-embedding-torch`` package that the original checkpoints were trained with.

    A pair (x0, x1) rotated by angle a is the complex product (x0 + i x1) * e^(i a); in float32 and float64
    ``rotate`` computes it so, in one pass and without concatenations. Other dtypes (bfloat16, float16) take the
    real-arithmetic path. The rotations are a function of (dim, theta, length, device, dtype) alone
    (``rotary_rotation``).
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        self.dim = dim
        self.theta = theta
        # the original checkpoints store these; the conversion checks them against ours
        self.register_buffer("freqs", rotary_frequencies(dim, theta), persistent=False)

    def angles(self, seq_len: int, device) -> torch.Tensor:
        """(seq_len, dim) angles, each repeated for the two features of its pair."""
        return rotary_angles(self.dim, self.theta, seq_len, torch.device(device))

    def rotate(self, x: torch.Tensor, seq_dim: int = -2, inplace: bool = False) -> torch.Tensor:
        """Rotate the features (last axis) of ``x`` by their position along ``seq_dim``; axes between the two
        are broadcast over (e.g. heads). ``x`` may be a strided view. ``inplace``: overwrite ``x`` and return it
        (for inference, where ``x`` is a fresh projection: no new tensor, and no concatenation when only part
        of the features rotate)."""
        n = x.shape[seq_dim]
        expand = (slice(None),) + (None,) * (-seq_dim - 2) if seq_dim < 0 else None
        if expand is None:
            raise ValueError("`seq_dim` must be negative")
        rotation = rotary_rotation(self.dim, self.theta, n, x.device, x.dtype)
        head, rest = x[..., : self.dim], x[..., self.dim :]
        # torch.compile takes the real-arithmetic path: inductor does not generate code for complex tensors, and
        # the layout check reads storage_offset(), which tracing cannot (so it is asked after is_compiling)
        if len(rotation) == 1 and not torch.compiler.is_compiling() and _complex_viewable(head):
            pairs = torch.view_as_complex(head.unflatten(-1, (-1, 2)))
            if inplace:
                pairs.mul_(rotation[0][expand])
                return x
            out = torch.view_as_real(pairs * rotation[0][expand]).flatten(-2)
        else:
            if len(rotation) == 1:  # a layout view_as_complex cannot take: real arithmetic
                rotation = rotary_rotation(self.dim, self.theta, n, x.device, x.dtype, real=True)
            cos, sin = rotation[0][expand], rotation[1][expand]
            pairs = head.unflatten(-1, (-1, 2))
            half_turn = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
            out = head * cos + half_turn * sin
            if inplace:
                head.copy_(out)
                return x
        return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out


def heads_from_projection(
    qkv: torch.Tensor, rotary_emb: Optional[RotaryEmbedding]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as (B, heads, N, head_dim) strided views of a (B, N, 3, heads, head_dim) projection, q and k
    rotated together in one pass (in place where ``inplace_allowed``). Split and unbind rather than indexing:
    their gradients are one cat or stack, where each index's gradient is a zero-filled tensor of the whole
    projection."""
    qk, v = qkv.split([2, 1], dim=2)
    if rotary_emb is not None:
        qk = rotary_emb.rotate(qk, seq_dim=-4, inplace=inplace_allowed())
    q, k = qk.unbind(2)
    return q.transpose(1, 2), k.transpose(1, 2), v.squeeze(2).transpose(1, 2)


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def rotary_frequencies(dim: int, theta: float) -> torch.Tensor:
    """(dim / 2,) float32 frequencies 1 / theta^(2i / dim)."""
    return 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)


def rotary_angles(dim: int, theta: float, seq_len: int, device: torch.device) -> torch.Tensor:
    """(seq_len, dim) float32 angles, each repeated for the two features of its pair."""
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)
    return (positions[:, None] * rotary_frequencies(dim, theta).to(device)[None, :]).repeat_interleave(2, dim=-1)


@tensor_cache  # a pure function of its arguments, called by every attention layer at every step
def rotary_rotation(dim: int, theta: float, seq_len: int, device: torch.device, dtype: torch.dtype,
                    real: bool = False) -> Tuple[torch.Tensor, ...]:
    """(N, dim / 2) complex rotations for float32 / float64 (unless ``real``), else (N, dim) cos and sin in
    ``dtype``."""
    angles = rotary_angles(dim, theta, seq_len, device)
    if dtype in _COMPLEX and not real:
        half = angles[:, ::2]
        return (torch.polar(torch.ones_like(half), half).to(_COMPLEX[dtype]),)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _complex_viewable(x: torch.Tensor) -> bool:
    return (x.shape[-1] % 2 == 0 and x.stride(-1) == 1 and x.storage_offset() % 2 == 0
            and all(s % 2 == 0 for s, n in zip(x.stride()[:-1], x.shape[:-1]) if n > 1))


class FrameConv3d(nn.Conv3d):
    """A Conv3d that runs a (1, k, k) kernel over channels-last input as one Conv2d over all frames: the
    (B * T, C, H, W) view of (B, T, H, W, C) memory is free, and 2D convolutions are better tuned than 3D ones.
    Any other kernel or layout: the plain 3D convolution. The fast path lives in ``forward``, so that hooks on
    the module (diffusers' layerwise casting and group offloading, accelerate's offloading) see every use of
    its weights; the parameters are a Conv3d's, so checkpoints load unchanged.

    ``forward(x, input_channels=slice(a, b), add_bias=False)`` applies only the weights of input channels
    ``a:b`` to ``x`` (which then holds those channels), without the bias: conv_in splits its linear input so."""

    def forward(self, x: torch.Tensor, input_channels: Optional[slice] = None, add_bias: bool = True) -> torch.Tensor:
        weight = self.weight if input_channels is None else self.weight[:, input_channels]
        bias = self.bias if add_bias else None
        if (self.kernel_size[0] != 1 or self.stride[0] != 1 or self.padding[0] != 0 or self.dilation[0] != 1
                or self.padding_mode != "zeros" or not x.is_contiguous(memory_format=torch.channels_last_3d)):
            return self._conv_forward(x, weight, bias)
        y = F.conv2d(rearrange(x, "b c t h w -> (b t) c h w"), weight.squeeze(2), bias,
                     self.stride[1:], self.padding[1:], self.dilation[1:], self.groups)
        return rearrange(y, "(b t) c h w -> b c t h w", b=x.shape[0])


class ScaleShiftGroupNorm(nn.GroupNorm):
    """GroupNorm that can also apply a per-(sample, channel) ``scale`` and ``shift`` (the time embedding's):
    ``norm(x) * (scale + 1) + shift``, with the norm's affine and the modulation folded into one multiply-add
    on the unscaled normalised activations. Inside ``forward``, so hooks on the module see its weights."""

    def forward(self, x: torch.Tensor, scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None) -> torch.Tensor:
        if scale is None:
            return super().forward(x)
        weight, bias = self.weight[:, None, None, None], self.bias[:, None, None, None]
        h = F.group_norm(x, self.num_groups, None, None, self.eps)
        return torch.addcmul(bias * (scale + 1) + shift, h, weight * (scale + 1))


class ResnetBlock3D(nn.Module):
    """Two (1, 3, 3) conv + group norm + SiLU layers with a residual; the time embedding scales and shifts
    the first one."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: Optional[int] = None, groups: int = 8):
        super().__init__()
        self.time_emb_proj = nn.Linear(temb_channels, out_channels * 2) if temb_channels is not None else None
        self.conv1 = FrameConv3d(in_channels, out_channels, (1, 3, 3), padding=(0, 1, 1))
        self.norm1 = ScaleShiftGroupNorm(groups, out_channels)
        self.conv2 = FrameConv3d(out_channels, out_channels, (1, 3, 3), padding=(0, 1, 1))
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv_shortcut = FrameConv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        inplace = inplace_allowed()
        h = self.conv1(x)
        if self.time_emb_proj is not None:
            scale, shift = self.time_emb_proj(F.silu(temb))[:, :, None, None, None].chunk(2, dim=1)
            h = self.norm1(h, scale, shift)
        else:
            h = self.norm1(h)
        h = F.silu(h, inplace=inplace)
        h = F.silu(self.norm2(self.conv2(h)), inplace=inplace)
        shortcut = self.conv_shortcut(x)
        return h.add_(shortcut) if inplace else h + shortcut


class Downsample3D(nn.Module):
    """Halves height and width with a strided (1, 4, 4) convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = FrameConv3d(channels, channels, (1, 4, 4), (1, 2, 2), (0, 1, 1))

    def output_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """(h, w) of the output for an input of (h, w) ``size``."""
        return tuple((s + 2 * p - k) // st + 1 for s, p, k, st in zip(size, self.conv.padding[1:], self.conv.kernel_size[1:], self.conv.stride[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample3D(nn.Module):
    """Doubles height and width: a (1, 4, 4) transposed convolution, or nearest upsampling and a conv."""

    def __init__(self, channels: int, use_deconv: bool = True, padding_mode: str = "zeros"):
        super().__init__()
        self.use_deconv = use_deconv
        if use_deconv:
            self.conv = nn.ConvTranspose3d(channels, channels, (1, 4, 4), (1, 2, 2), (0, 1, 1))
        else:
            self.conv = FrameConv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1), padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_deconv:
            return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))
        return self.conv(x)


class OutputHead(nn.Module):
    """ResNet block (no time embedding) and a 1x1x1 conv to the output channels."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, groups: int = 8):
        super().__init__()
        self.resnet = ResnetBlock3D(in_channels, hidden_channels, groups=groups)
        self.conv = FrameConv3d(hidden_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.resnet(x))
