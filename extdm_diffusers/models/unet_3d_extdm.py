"""ExtDMUNet3DModel: the ExtDM motion denoiser, one configurable class for all released variants.

It predicts the noise in the future motion (B, 3, P, h, w: flow x, y and occlusion in [-1, 1]) given the
observed motion and the autoencoder's bottleneck features. The original ships one file per variant; here
the differences are config fields (see ``ARCHITECTURE_PRESETS`` in ``extdm_diffusers.architectures`` and
``docs/models.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .distribution_adaptor import DistributionAdaptor, adaptor_depth
from .offload_hooks import apply_offload_hooks
from .space_time_window_attention import SpaceTimeWindowAttention
from .temporal_attention import RelativePositionBias, TemporalAttention
from .trajectory_attention import TrajectoryCrossAttention
from .unet_blocks import (
    Downsample3D, FrameConv3d, OutputHead, ResnetBlock3D, RotaryEmbedding, Upsample3D, check_chunk_tokens,
)

MOTION_CHANNELS = 3  # flow x, flow y, occlusion
# The U-Net runs channels-last ((B, T, H, W, C) in memory): convolutions skip their layout reorders, and the
# attention layers' channels-last views need no copies.
CHANNELS_LAST = torch.channels_last_3d
CONDITION_FEATURE_MODES = ("none", "trajectory_attention", "adaptor")
#: what the denoised motion can be measured from (``motion_prior``): the last observed motion continued, unbounded or
#: bouncing off the frame's edges; name -> ``FlowAutoencoder.extrapolate``'s ``reflect_extent``
MOTION_PRIORS = {"constant_velocity": None, "constant_velocity_reflected": 1.25}
BLOCK_LAYOUTS = ("interleaved", "grouped")
#: how the residual from the ``motion_prior`` is scaled per predicted frame (``motion_prior_residual_scaling``):
#: ``"by_frame"`` divides the k-th frame's by k, since a guess whose velocity is off errs in proportion to k
RESIDUAL_SCALINGS = ("by_frame",)


def check_residual_scaling(residual_scaling: Optional[str], motion_prior: Optional[str],
                           name: str = "motion_prior_residual_scaling") -> None:
    """A residual scaling is a known name, and scales the residual from a ``motion_prior``: there must be one."""
    if residual_scaling is not None and (residual_scaling not in RESIDUAL_SCALINGS or motion_prior is None):
        raise ValueError(f"`{name}` must be None or one of {RESIDUAL_SCALINGS} (with a `motion_prior`), got "
                         f"{residual_scaling!r} with motion_prior={motion_prior!r}")


def check_motion_prior(motion_prior: Optional[str], num_cond_frames: int) -> None:
    """``motion_prior`` continues the step between the last two observed frames: a known name and two of them."""
    if motion_prior is not None and (motion_prior not in MOTION_PRIORS or num_cond_frames < 2):
        raise ValueError(f"`motion_prior` must be None or one of {tuple(MOTION_PRIORS)} (with num_cond_frames >= 2), got "
                         f"{motion_prior!r} with num_cond_frames={num_cond_frames}")


@dataclass
class ExtDMUNet3DOutput(BaseOutput):
    """sample: (B, 3, P, h, w) predicted noise for flow x, y and occlusion of the P future frames."""

    sample: torch.Tensor = None


@dataclass
class ExtDMUNet3DCondition:
    """What the denoiser computes from its condition alone, once per window (``ExtDMUNet3DModel.prepare_condition``),
    and reuses at every denoising step of that window: nothing here depends on the noisy sample or the timestep.

    conv_in_term: conv_in's share of the condition. Modes ``"none"`` and ``"adaptor"``: the prepared features'
        term with the bias (conv_in is linear in its input channels, and its (1, k, k) kernel works frame by
        frame), plus over the M observed frames their motion's term: all of conv_in's output but the noisy
        future motion's term, (B, init_channels, M + P, h, w). ``"trajectory_attention"``: conv_in's whole output
        over the M observed frames, (B, init_channels, M, h, w) (only the future frames' features depend on the
        noisy sample there).
    position_bias: (heads, M + P, M + P) the temporal attention's relative position bias.
    window_attention_mask: per block (down blocks, middle block, up blocks) the shift masks of its two window
        attention layers, None where a layer's windows are not shifted (see
        ``SpaceTimeWindowAttention.attention_mask``). Parameter-free: the layers add their learned bias in
        ``forward``, where offloading and casting hooks see it.
    """

    conv_in_term: torch.Tensor
    position_bias: torch.Tensor
    window_attention_mask: Tuple[Tuple[Optional[torch.Tensor], Optional[torch.Tensor]], ...]


class ExtDMBlock3D(nn.Module):
    """Two ResNet blocks, shifted then plain space-time window attention, an optional distribution adaptor
    and an optional temporal attention.

    ``layout="interleaved"``: resnet, attention, resnet, attention, adaptor, temporal attention.
    ``layout="grouped"``: resnet, resnet, attention, attention, adaptor, temporal attention; in the middle
    block: resnet, attention, attention, adaptor, resnet (the Cityscapes model).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int,
        window_size: Tuple[int, int, int],
        heads: int,
        head_dim: int,
        rotary_emb: RotaryEmbedding,
        layout: str,
        adaptor: Optional[DistributionAdaptor],
        temporal_attention: bool,
        is_middle: bool = False,
    ):
        super().__init__()
        shift = tuple(w // 2 for w in window_size)
        self.resnet1 = ResnetBlock3D(in_channels, out_channels, temb_channels, groups)
        self.window_attention1 = SpaceTimeWindowAttention(out_channels, window_size, shift, heads, head_dim, rotary_emb)
        self.resnet2 = ResnetBlock3D(out_channels, out_channels, temb_channels, groups)
        self.window_attention2 = SpaceTimeWindowAttention(out_channels, window_size, (0, 0, 0), heads, head_dim, rotary_emb)
        self.adaptor = adaptor
        self.temporal_attention = TemporalAttention(out_channels, heads, head_dim, rotary_emb) if temporal_attention else None
        self.layout = layout
        self.is_middle = is_middle

    def window_attention_mask(self, size: Tuple[int, int, int], batch: int, device, dtype) -> Tuple[Optional[torch.Tensor], ...]:
        """The two window attention layers' shift masks for inputs of (frames, height, width) ``size``."""
        return tuple(attention.attention_mask(size, batch, device, dtype)
                     for attention in (self.window_attention1, self.window_attention2))

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, position_bias: torch.Tensor,
        window_mask: Optional[Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]] = None,
    ) -> torch.Tensor:
        mask1, mask2 = (None, None) if window_mask is None else window_mask
        if self.layout == "interleaved":
            x = self.window_attention1(self.resnet1(x, temb), mask1)
            x = self.window_attention2(self.resnet2(x, temb), mask2)
        elif self.is_middle:
            x = self.window_attention2(self.window_attention1(self.resnet1(x, temb), mask1), mask2)
        else:
            x = self.resnet2(self.resnet1(x, temb), temb)
            x = self.window_attention2(self.window_attention1(x, mask1), mask2)
        if self.adaptor is not None:
            x = self.adaptor(x)
        if self.layout == "grouped" and self.is_middle:
            x = self.resnet2(x, temb)
        if self.temporal_attention is not None:
            x = self.temporal_attention(x, position_bias)
        return x


class ExtDMUNet3DModel(ModelMixin, ConfigMixin):
    """The ExtDM denoiser.

    Args:
        num_cond_frames: observed frames whose motion conditions the model (``cond_num`` originally).
        num_pred_frames: future frames denoised at once (``pred_num``).
        cond_feature_channels: channels of the autoencoder bottleneck features (the original hard-codes 256).
        base_channels, channel_mults: U-Net widths (``dim``, ``dim_mults``).
        init_channels, init_kernel_size, resnet_groups: as ``init_dim``, ``init_kernel_size``, ``resnet_groups``.
        attention_heads, attention_head_dim, window_size: window and temporal attention geometry.
        include_reference_motion: condition on the motion of all observed frames, the reference (last) one
            included (the ``w_ref`` models); otherwise the reference frame's motion, an identity warp, is dropped.
        motion_embedding_channels: embed the motion with a (1, k, k) conv to this many channels before the
            features join it (256 in the ``traj`` models); ``None`` concatenates the raw 3 channels.
        condition_feature_mode: how the features are processed before they join the motion: ``"none"``,
            ``"trajectory_attention"`` (cross-attention from the embedded noisy motion, BAIR) or ``"adaptor"``
            (a distribution adaptor and a temporal attention, KTH and Cityscapes).
        trajectory_attention_heads: heads of the trajectory cross-attention.
        block_layout: ``"interleaved"`` or ``"grouped"`` (see ``ExtDMBlock3D``).
        block_temporal_attention: a temporal attention at the end of every down and up block.
        down_block_adaptors, up_block_adaptors: which down/up blocks (in execution order) end with a
            distribution adaptor; ``None``: all but the first two. The middle block always has one.
        adaptor_layers: extrapolation layers per adaptor; ``None``: enough to cover ``num_pred_frames``.
        adaptor_kernel_size, adaptor_zero_init: the extrapolation convolutions.
        use_deconv, padding_mode: upsampling by transposed conv, or nearest + conv with this padding.
        rotary_dim: features rotated by the rotary embedding; ``None``: min(32, attention_head_dim).
        time_bias_max_distance: largest distinguished time offset of the relative position bias.
        motion_latent_scale: what the flow channels of the motion it denoises are: ``None``, the flow grid itself
            (the original); a number s, s times the displacement from the identity grid, so that the motion's
            spread is near the noise's (as latent diffusion scales its latents): the pipeline converts, the
            network never reads it.
        motion_prior: what the motion it denoises is measured from: ``None``, nothing (the original); ``"constant_velocity"``,
            the autoencoder's extrapolation of the last two observed frames (``FlowAutoencoder.extrapolate``): it
            denoises the window's motion minus that guess, in the same units. The pipeline computes the guess once
            per window and converts; the network never reads it. Needs ``num_cond_frames`` >= 2.
        motion_prior_residual_scaling: ``None`` (one scale for every frame) or ``"by_frame"``: with a
            ``motion_prior``, the k-th predicted frame's residual is divided by k before it is denoised (the
            pipeline converts; the network never reads it).
        motion_prior_input: with a ``motion_prior``, also read the guess itself: conv_in takes 3 more channels,
            the observed frames' motion followed by the guessed window's (``prior_motion`` of ``forward`` and
            ``prepare_condition``), so that the network sees what it corrects and need not rebuild the guess
            from the observed motion. Modes ``"none"`` and ``"adaptor"`` (the guess joins the step-invariant
            ``conv_in_term``).
    """

    _supports_gradient_checkpointing = True
    # what device_map="auto" keeps on one device: each block reads its inputs and skip tensors as a whole
    _no_split_modules = [
        "ExtDMBlock3D", "TemporalAttention", "TrajectoryCrossAttention", "DistributionAdaptor", "OutputHead",
        "ResnetBlock3D", "Downsample3D", "Upsample3D",
    ]
    # layerwise casting keeps these in the compute dtype, beside the norms (diffusers' default): the temporal
    # attention's learned position bias, an embedding table that fp8 storage would round to 3 mantissa bits
    _skip_layerwise_casting_patterns = ["norm", "time_position_bias"]

    @register_to_config
    def __init__(
        self,
        num_cond_frames: int = 2,
        num_pred_frames: int = 5,
        cond_feature_channels: int = 256,
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 4, 4),
        init_channels: Optional[int] = None,
        init_kernel_size: int = 7,
        resnet_groups: int = 8,
        attention_heads: int = 8,
        attention_head_dim: int = 32,
        window_size: Sequence[int] = (2, 4, 4),
        include_reference_motion: bool = True,
        motion_embedding_channels: Optional[int] = None,
        condition_feature_mode: str = "none",
        trajectory_attention_heads: int = 8,
        block_layout: str = "interleaved",
        block_temporal_attention: bool = False,
        down_block_adaptors: Optional[Sequence[bool]] = None,
        up_block_adaptors: Optional[Sequence[bool]] = None,
        adaptor_layers: Optional[int] = None,
        adaptor_kernel_size: Sequence[int] = (1, 3, 3),
        adaptor_zero_init: bool = True,
        use_deconv: bool = True,
        padding_mode: str = "zeros",
        rotary_dim: Optional[int] = None,
        time_bias_max_distance: int = 32,
        motion_latent_scale: Optional[float] = None,
        motion_prior: Optional[str] = None,
        motion_prior_residual_scaling: Optional[str] = None,
        motion_prior_input: bool = False,
    ):
        super().__init__()
        check_motion_prior(motion_prior, num_cond_frames)
        check_residual_scaling(motion_prior_residual_scaling, motion_prior)
        if motion_prior_input and (motion_prior is None or condition_feature_mode == "trajectory_attention"):
            raise ValueError(
                "`motion_prior_input=True` needs a `motion_prior` and `condition_feature_mode` 'none' or 'adaptor', got "
                f"motion_prior={motion_prior!r}, condition_feature_mode={condition_feature_mode!r}")
        if motion_latent_scale is not None and not motion_latent_scale > 0:
            raise ValueError(f"`motion_latent_scale` must be a positive number or None, got {motion_latent_scale!r}")
        if condition_feature_mode not in CONDITION_FEATURE_MODES:
            raise ValueError(f"`condition_feature_mode` must be one of {CONDITION_FEATURE_MODES}, got {condition_feature_mode!r}")
        if block_layout not in BLOCK_LAYOUTS:
            raise ValueError(f"`block_layout` must be one of {BLOCK_LAYOUTS}, got {block_layout!r}")
        if condition_feature_mode == "trajectory_attention" and motion_embedding_channels != cond_feature_channels:
            raise ValueError(
                "`condition_feature_mode='trajectory_attention'` needs `motion_embedding_channels` equal to "
                f"`cond_feature_channels` ({cond_feature_channels}), got {motion_embedding_channels}"
            )
        num_observed = num_cond_frames if include_reference_motion else num_cond_frames - 1
        if num_observed < 1:
            raise ValueError(f"`num_cond_frames` must leave at least one observed motion frame, got {num_cond_frames}")
        num_levels = len(channel_mults)
        default_adaptors = tuple(i > 1 for i in range(num_levels))
        down_block_adaptors = tuple(default_adaptors if down_block_adaptors is None else down_block_adaptors)
        up_block_adaptors = tuple(default_adaptors if up_block_adaptors is None else up_block_adaptors)
        for name, flags in (("down_block_adaptors", down_block_adaptors), ("up_block_adaptors", up_block_adaptors)):
            if len(flags) != num_levels:
                raise ValueError(f"`{name}` needs one flag per level ({num_levels}), got {flags}")

        init_channels = init_channels or base_channels
        rotary_dim = rotary_dim or min(32, attention_head_dim)
        adaptor_layers = adaptor_depth(num_observed, num_pred_frames, adaptor_layers)[0]
        # Register what the None defaults resolve to: the saved config describes the architecture by itself.
        self.register_to_config(
            down_block_adaptors=down_block_adaptors, up_block_adaptors=up_block_adaptors,
            init_channels=init_channels, rotary_dim=rotary_dim, adaptor_layers=adaptor_layers,
        )

        self.num_observed = num_observed
        self.gradient_checkpointing = False
        window_size = tuple(window_size)
        rotary = RotaryEmbedding(rotary_dim)
        self.rotary_emb = rotary
        temb_channels = base_channels * 4

        def make_adaptor(channels: int) -> DistributionAdaptor:
            return DistributionAdaptor(
                channels, num_observed, num_pred_frames, adaptor_layers, tuple(adaptor_kernel_size), adaptor_zero_init
            )

        # condition path
        motion_width = motion_embedding_channels or MOTION_CHANNELS
        if motion_embedding_channels is not None:
            self.motion_embedding = FrameConv3d(
                MOTION_CHANNELS, motion_embedding_channels, (1, init_kernel_size, init_kernel_size),
                padding=(0, init_kernel_size // 2, init_kernel_size // 2),
            )
        if condition_feature_mode == "trajectory_attention":
            self.trajectory_attention = TrajectoryCrossAttention(cond_feature_channels, num_observed, trajectory_attention_heads)
        elif condition_feature_mode == "adaptor":
            self.condition_adaptor = make_adaptor(cond_feature_channels)
            self.condition_temporal_attention = TemporalAttention(cond_feature_channels, attention_heads, attention_head_dim, rotary)

        prior_width = MOTION_CHANNELS if motion_prior_input else 0
        self.conv_in = FrameConv3d(
            motion_width + prior_width + cond_feature_channels, init_channels, (1, init_kernel_size, init_kernel_size),
            padding=(0, init_kernel_size // 2, init_kernel_size // 2),
        )
        self.temporal_attention_in = TemporalAttention(init_channels, attention_heads, attention_head_dim, rotary)
        self.time_position_bias = RelativePositionBias(attention_heads, num_buckets=32, max_distance=time_bias_max_distance)
        self.time_proj = Timesteps(base_channels, flip_sin_to_cos=False, downscale_freq_shift=1)
        self.time_embedding = TimestepEmbedding(base_channels, temb_channels, act_fn="gelu")

        widths = [init_channels] + [base_channels * m for m in channel_mults]
        levels = list(zip(widths[:-1], widths[1:]))
        block_args = dict(
            temb_channels=temb_channels, groups=resnet_groups, window_size=window_size, heads=attention_heads,
            head_dim=attention_head_dim, rotary_emb=rotary, layout=block_layout,
        )
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for i, (width_in, width_out) in enumerate(levels):
            self.down_blocks.append(ExtDMBlock3D(
                width_in, width_out, adaptor=make_adaptor(width_out) if down_block_adaptors[i] else None,
                temporal_attention=block_temporal_attention, **block_args,
            ))
            self.downsamplers.append(Downsample3D(width_out) if i < num_levels - 1 else nn.Identity())
        self.mid_block = ExtDMBlock3D(
            widths[-1], widths[-1], adaptor=make_adaptor(widths[-1]), temporal_attention=False, is_middle=True, **block_args
        )
        self.up_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i, (width_in, width_out) in enumerate(reversed(levels)):
            self.up_blocks.append(ExtDMBlock3D(
                width_out * 2, width_in, adaptor=make_adaptor(width_in) if up_block_adaptors[i] else None,
                temporal_attention=block_temporal_attention, **block_args,
            ))
            self.upsamplers.append(Upsample3D(width_in, use_deconv, padding_mode) if i < num_levels - 1 else nn.Identity())

        self.flow_out = OutputHead(base_channels * 2, base_channels, 2, resnet_groups)
        self.occlusion_out = OutputHead(base_channels * 2, base_channels, 1, resnet_groups)

    # ------------------------------------------------------------------------------------------------------
    @property
    def num_feature_frames(self) -> int:
        """Frames of ``cond_features``: the observed ones and the future ones."""
        return self.num_observed + self.config.num_pred_frames

    def _check_inputs(self, sample, cond_motion, cond_features) -> None:
        cfg = self.config
        expected = {
            "sample": (MOTION_CHANNELS, cfg.num_pred_frames, "(B, 3, num_pred_frames, h, w)"),
            "cond_motion": (MOTION_CHANNELS, cfg.num_cond_frames, "(B, 3, num_cond_frames, h, w)"),
            "cond_features": (cfg.cond_feature_channels, self.num_feature_frames,
                              "(B, cond_feature_channels, num_cond_frames" + ("" if cfg.include_reference_motion else " - 1") + " + num_pred_frames, h', w')"),
        }
        for name, tensor in (("sample", sample), ("cond_motion", cond_motion), ("cond_features", cond_features)):
            channels, frames, layout = expected[name]
            if not isinstance(tensor, torch.Tensor) or tensor.ndim != 5 or tensor.shape[1] != channels or tensor.shape[2] != frames:
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"`{name}` must have shape {layout} = (B, {channels}, {frames}, ...), got {got}")
        batch = {"sample": sample.shape[0], "cond_motion": cond_motion.shape[0], "cond_features": cond_features.shape[0]}
        if any(size != batch["sample"] for size in batch.values()):  # compared, not hashed (torch.compile's sizes)
            raise ValueError(f"batch sizes of `sample`, `cond_motion` and `cond_features` must match, got {batch}")
        if sample.shape[-2:] != cond_motion.shape[-2:]:
            raise ValueError(f"`sample` and `cond_motion` must share (h, w), got {tuple(sample.shape[-2:])} and {tuple(cond_motion.shape[-2:])}")

    @staticmethod
    def _resize_features(features: torch.Tensor, size) -> torch.Tensor:
        """Bilinear resize of every frame of (B, C, T, h', w') features to ``size``."""
        if tuple(features.shape[-2:]) == tuple(size):
            return features
        frames = F.interpolate(rearrange(features, "b c t h w -> (b t) c h w"), size=tuple(size), mode="bilinear")
        return rearrange(frames, "(b t) c h w -> b c t h w", b=features.shape[0])

    def _prepare_features(self, cond_features: torch.Tensor, motion_size, position_bias: torch.Tensor) -> torch.Tensor:
        """The feature condition at motion resolution ``motion_size`` (h, w), in the modes where it does not
        depend on the noisy sample (``"none"``, ``"adaptor"``)."""
        if self.config.condition_feature_mode == "adaptor":
            cond_features = self.condition_temporal_attention(self.condition_adaptor(cond_features), position_bias)
        return self._resize_features(cond_features, motion_size).contiguous(memory_format=CHANNELS_LAST)

    def _embed_motion(self, motion: torch.Tensor) -> torch.Tensor:
        motion = motion.contiguous(memory_format=CHANNELS_LAST)
        return motion if self.config.motion_embedding_channels is None else self.motion_embedding(motion)

    def _check_prior_motion(self, prior_motion: Optional[torch.Tensor], cond_motion: torch.Tensor) -> None:
        """``prior_motion`` is given exactly when the model reads it (``motion_prior_input``), (B, 3, P, h, w)."""
        cfg = self.config
        if not cfg.motion_prior_input:
            if prior_motion is not None:
                raise ValueError("`prior_motion` was given, but this model does not read it (`motion_prior_input` is False)")
            return
        expected = (cond_motion.shape[0], MOTION_CHANNELS, cfg.num_pred_frames, *cond_motion.shape[-2:])
        if not isinstance(prior_motion, torch.Tensor) or tuple(prior_motion.shape) != expected:
            got = tuple(prior_motion.shape) if isinstance(prior_motion, torch.Tensor) else type(prior_motion).__name__
            raise ValueError(f"`prior_motion` (the guessed window's motion; `motion_prior_input` is True) must have shape "
                             f"(B, 3, num_pred_frames, h, w) = {expected}, got {got}")

    def _condition_terms(
        self, cond_motion: torch.Tensor, cond_features: torch.Tensor, dtype: torch.dtype,
        prior_motion: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``conv_in_term`` and ``position_bias`` of ``ExtDMUNet3DCondition``, computed in ``dtype``."""
        m, size = self.num_observed, tuple(cond_motion.shape[-2:])
        position_bias = self.time_position_bias(self.num_feature_frames, cond_motion.device)
        features = cond_features.to(dtype)
        # the observed frames' motion does not change across denoising steps: its embedding and conv_in term join
        # the condition, and each step convolves the future frames' motion only
        observed_motion = self._embed_motion(cond_motion[:, :, :m].to(dtype))
        if self.config.condition_feature_mode == "trajectory_attention":
            observed_features = self._resize_features(features[:, :, :m], size).contiguous(memory_format=CHANNELS_LAST)
            return self.conv_in(torch.cat([observed_motion, observed_features], dim=1)), position_bias
        features = self._prepare_features(features, size, position_bias)
        if self.config.motion_prior_input:  # the observed motion, then the guess: one track over all frames
            track = torch.cat([cond_motion[:, :, :m], prior_motion], dim=2).to(dtype)
            features = torch.cat([track.contiguous(memory_format=CHANNELS_LAST), features], dim=1)
        motion_width = self.config.motion_embedding_channels or MOTION_CHANNELS
        term = self.conv_in(features.contiguous(memory_format=CHANNELS_LAST), input_channels=slice(motion_width, None))
        # frames split, not sliced (here and in forward): the gradient is one cat, not a zero-filled copy per slice
        observed_term, future_term = term.split([m, term.shape[2] - m], dim=2)
        observed = self.conv_in(observed_motion, input_channels=slice(0, motion_width), add_bias=False) + observed_term
        return torch.cat([observed, future_term], dim=2).contiguous(memory_format=CHANNELS_LAST), position_bias

    def _block_sizes(self, motion_size) -> List[Tuple[int, int, int]]:
        """(frames, h, w) at which each block runs: the down blocks, the middle block, the up blocks."""
        h, w = motion_size
        down = []
        for downsample in self.downsamplers:
            down.append((self.num_feature_frames, h, w))
            if isinstance(downsample, Downsample3D):
                h, w = downsample.output_size((h, w))
        return down + [down[-1]] + down[::-1]

    @apply_offload_hooks  # moves the model where `enable_model_cpu_offload` runs it, before its first use
    def prepare_condition(self, cond_motion: torch.Tensor, cond_features: torch.Tensor,
                          prior_motion: Optional[torch.Tensor] = None) -> ExtDMUNet3DCondition:
        """Everything ``forward`` computes from ``cond_motion`` and ``cond_features`` (and ``prior_motion``, the
        guess, where ``motion_prior_input``) alone, in ``cond_motion``'s dtype. A pipeline calls it once per window
        and passes the result, with these same tensors, to every denoising step:
        ``forward(sample, t, cond_motion, cond_features, condition=...)``."""
        cfg = self.config
        for name, tensor, channels, frames in (("cond_motion", cond_motion, MOTION_CHANNELS, cfg.num_cond_frames),
                                               ("cond_features", cond_features, cfg.cond_feature_channels, self.num_feature_frames)):
            if not isinstance(tensor, torch.Tensor) or tensor.ndim != 5 or tuple(tensor.shape[1:3]) != (channels, frames):
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"`{name}` must have shape (B, {channels}, {frames}, ...), got {got}")
        self._check_prior_motion(prior_motion, cond_motion)
        batch, device, dtype = cond_motion.shape[0], cond_motion.device, cond_motion.dtype
        conv_in_term, position_bias = self._condition_terms(cond_motion, cond_features, dtype, prior_motion)
        blocks = [*self.down_blocks, self.mid_block, *self.up_blocks]
        window_mask = tuple(block.window_attention_mask(size, batch, device, dtype)
                            for block, size in zip(blocks, self._block_sizes(cond_motion.shape[-2:])))
        return ExtDMUNet3DCondition(conv_in_term=conv_in_term, position_bias=position_bias, window_attention_mask=window_mask)

    def _check_condition(self, condition: ExtDMUNet3DCondition, sample: torch.Tensor) -> None:
        if not isinstance(condition, ExtDMUNet3DCondition):
            raise ValueError(f"`condition` must be an ExtDMUNet3DCondition (see `prepare_condition`), got {type(condition).__name__}")
        frames = self.num_observed if self.config.condition_feature_mode == "trajectory_attention" else self.num_feature_frames
        expected = (sample.shape[0], self.config.init_channels, frames, *sample.shape[-2:])
        if tuple(condition.conv_in_term.shape) != expected:
            raise ValueError(
                f"`condition` was prepared for other inputs: its conv_in term is {tuple(condition.conv_in_term.shape)}, "
                f"these inputs need {expected} (see `prepare_condition`)"
            )

    def set_attention_chunking(self, max_tokens: Union[int, str, None] = "auto") -> None:
        """How the window and temporal attention layers split their sequences into chunks.

        ``"auto"`` (the default): on the CPU, chunks whose q/k/v projection stays under
        ``ATTENTION_CHUNK_BYTES`` (about 4,096 tokens at the released width), so that no intermediate needs
        fresh memory from the kernel; on other devices, one chunk. An int: at most that many tokens per chunk
        (whole sequences), on any device, e.g. to bound a GPU's memory at large batches. ``None``: one chunk.
        The output does not depend on the chunking beyond float rounding."""
        check_chunk_tokens(max_tokens)
        for module in self.modules():
            if isinstance(module, (SpaceTimeWindowAttention, TemporalAttention)):
                module.chunk_tokens = max_tokens

    def _run(self, module: nn.Module, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        cond_motion: torch.Tensor,
        cond_features: torch.Tensor,
        return_dict: bool = True,
        condition: Optional[ExtDMUNet3DCondition] = None,
        prior_motion: Optional[torch.Tensor] = None,
    ) -> Union[ExtDMUNet3DOutput, Tuple[torch.Tensor]]:
        """
        Args:
            sample: (B, 3, P, h, w) noisy future motion.
            timestep: diffusion step, a number or a (B,) tensor.
            cond_motion: (B, 3, num_cond_frames, h, w) motion of the observed frames (flow grid and occlusion
                map mapped to [-1, 1]).
            cond_features: (B, F, num_feature_frames, h', w') bottleneck features; resized to (h, w) here.
            condition: ``prepare_condition(cond_motion, cond_features)``: the work that does not change across
                denoising steps, done once. ``None`` computes it here (training).
            prior_motion: (B, 3, P, h, w) the guessed window's motion, in the units of ``cond_motion``: needed
                where ``motion_prior_input`` and ``condition`` is None (else ``prepare_condition`` took it).
        """
        self._check_inputs(sample, cond_motion, cond_features)
        batch, num_observed = sample.shape[0], self.num_observed
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(batch)

        trajectory = self.config.condition_feature_mode == "trajectory_attention"
        if condition is None:
            # the condition joins the noisy sample (trajectory mode) or the motion of all frames in their dtype
            dtype = sample.dtype if trajectory else torch.promote_types(cond_motion.dtype, sample.dtype)
            self._check_prior_motion(prior_motion, cond_motion)
            conv_in_term, position_bias = self._condition_terms(cond_motion, cond_features, dtype, prior_motion)
            window_mask = (None,) * (len(self.down_blocks) + 1 + len(self.up_blocks))  # each layer builds its own
        else:
            self._check_condition(condition, sample)
            conv_in_term, position_bias, window_mask = condition.conv_in_term, condition.position_bias, condition.window_attention_mask
        future_motion = self._embed_motion(sample)
        if trajectory:
            features = self.trajectory_attention(future_motion, cond_features.to(sample.dtype))
            features = self._resize_features(features, sample.shape[-2:]).contiguous(memory_format=CHANNELS_LAST)
            future = self.conv_in(torch.cat([future_motion, features], dim=1))
            x = torch.cat([conv_in_term, future], dim=2).contiguous(memory_format=CHANNELS_LAST)
        else:
            future = self.conv_in(future_motion, input_channels=slice(0, future_motion.shape[1]), add_bias=False)
            observed_term, future_term = conv_in_term.split([num_observed, future.shape[2]], dim=2)
            x = torch.cat([observed_term, future + future_term], dim=2)
            x = x.contiguous(memory_format=CHANNELS_LAST)
        initial = x
        x = self.temporal_attention_in(x, position_bias)
        temb = self.time_embedding(self.time_proj(timesteps).to(x.dtype))

        num_down = len(self.down_blocks)
        skips = []
        for block, downsample, mask in zip(self.down_blocks, self.downsamplers, window_mask[:num_down]):
            x = self._run(block, x, temb, position_bias, mask)
            skips.append(x)
            x = downsample(x)
        x = self._run(self.mid_block, x, temb, position_bias, window_mask[num_down])
        for block, upsample, mask in zip(self.up_blocks, self.upsamplers, window_mask[num_down + 1 :]):
            x = self._run(block, torch.cat([x, skips.pop()], dim=1), temb, position_bias, mask)
            x = upsample(x)

        x = torch.cat([x, initial], dim=1)
        out = torch.cat([self.flow_out(x), self.occlusion_out(x)], dim=1).split([num_observed, sample.shape[2]], dim=2)[1]
        out = out.contiguous()
        return ExtDMUNet3DOutput(sample=out) if return_dict else (out,)
