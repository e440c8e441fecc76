"""ExtDMPipeline: future-frame prediction with ExtDM.

The observed frames are encoded once into motion relative to the last observed frame (the reference) and
bottleneck features; the U-Net denoises the future motion under a diffusers scheduler; the flow
autoencoder decodes all predicted frames in one batched call. Horizons beyond the model's window are
rolled out window by window as the original evaluation does: each window is conditioned on the frames decoded
before it. ``rollout_reference`` says which frame a later window's frames are warps of (``ROLLOUT_REFERENCES``).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from ..models.autoencoder_blocks import make_coordinate_grid
from ..models.flow_autoencoder import FlowAutoencoder, compose_motion
from ..models.unet_3d_extdm import MOTION_PRIORS, ExtDMUNet3DModel, check_motion_prior, check_residual_scaling

if TYPE_CHECKING:
    from ..benchmarks import Benchmark

# every form diffusers' `VideoProcessor.preprocess_video` takes
VideoInput = Union[torch.Tensor, np.ndarray, List[PIL.Image.Image], List[List[PIL.Image.Image]], List[torch.Tensor], List[np.ndarray]]

#: The module ``save_pretrained`` writes beside ``model_index.json`` for diffusers' custom-pipeline route.
PIPELINE_MODULE_FILE = "pipeline_extdm.py"
_PIPELINE_MODULE_SOURCE = '''"""Lets `DiffusionPipeline.from_pretrained` load this folder: the pipeline lives in the extdm-diffusers package
(pip install extdm-diffusers)."""
from extdm_diffusers import ExtDMPipeline  # noqa: F401
'''


#: Which frame the frames of a rollout's later windows are warps of. ``"last_decoded"`` (the original): the last
#: frame decoded before the window, by the window's motion; every window interpolates the one before again, so blur
#: compounds. ``"observed"``: the last observed frame, by the window's motion composed with the motion of that last
#: decoded frame (``compose_motion``): every frame is one warp of an observed frame. The condition is the same.
DEFAULT_ROLLOUT_REFERENCE = "last_decoded"  # the original's, the default wherever a pipeline does not say
ROLLOUT_REFERENCES = (DEFAULT_ROLLOUT_REFERENCE, "observed")


@dataclass
class ExtDMPipelineOutput(BaseOutput):
    """
    frames: the predicted future frames only, one video per input video and sample (video-major order):
        ``"pt"``: (N, num_frames, C, H, W) in [0, 1]; ``"np"``: (N, num_frames, H, W, C) float32 in [0, 1];
        ``"pil"``: N lists of PIL images; ``"latent"``: what the denoiser produced, in its convention and the
        layout of the ``latents`` argument: (N, 3, num_frames, h, w), flow grid x, y and 2·occlusion−1, all in
        [-1, 1] (``ExtDMPipeline.decode_latents`` turns it into frames).
    motion: with ``return_motion=True`` (or ``output_type="latent"``), the predicted motion for reading
        (N, num_frames, 3, h, w): flow grid x, y in [-1, 1] and occlusion in [0, 1], each window's relative to
        its own reference (the last frame decoded before it) as the denoiser predicts it, whatever the
        ``rollout_reference``; otherwise None.
    """

    frames: Union[torch.Tensor, np.ndarray, List[List[PIL.Image.Image]]] = None
    motion: Optional[torch.Tensor] = None


@dataclass
class MotionCondition:
    """What the denoiser is conditioned on, for one window (see ``ExtDMPipeline.encode_condition``).

    reference: (B, C, H, W) the last observed frame, which every frame is a warp of.
    cond_motion: (B, 3, num_cond_frames, h, w) motion of the observed frames: flow grid x, y and 2·occlusion−1
        (zeros where occlusion is not used).
    cond_features: (B, F, num_feature_frames, h', w') bottleneck features of the observed frames but the last,
        then the reference's repeated over the rest of the window.
    flow, occlusion: (B, T, 2, h, w) and (B, T, 1, h, w) or None: the raw motion of all encoded frames.
    future_motion: (B, 3, K, h, w) motion of the K frames after the observed ones, when they were given
        (training targets); else None.
    prior_motion: (B, 3, num_pred_frames, h, w) the window's motion guessed from the observed frames alone (the
        denoiser's ``motion_prior``), which the denoiser refines: it denoises the motion minus this guess; None for
        the original, which denoises the motion itself.
    residual_scale: (1, 1, num_pred_frames, 1, 1) what the residual from ``prior_motion`` is divided by per frame
        (``motion_prior_residual_scaling``), or None: not scaled.
    """

    reference: torch.Tensor
    cond_motion: torch.Tensor
    cond_features: torch.Tensor
    flow: torch.Tensor
    occlusion: Optional[torch.Tensor]
    future_motion: Optional[torch.Tensor] = None
    prior_motion: Optional[torch.Tensor] = None
    residual_scale: Optional[torch.Tensor] = None

    def denoising_target(self) -> torch.Tensor:
        """What the denoiser learns to sample: ``future_motion``, less ``prior_motion`` where there is one (divided
        by ``residual_scale`` where there is one)."""
        if self.future_motion is None:
            raise ValueError("the condition has no future motion: encode the observed frames and the future ones")
        if self.prior_motion is None:
            return self.future_motion
        residual = self.future_motion - self.prior_motion
        return residual if self.residual_scale is None else residual / self.residual_scale

    def motion_from_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """The window's motion from what the denoiser sampled (the inverse of ``denoising_target``)."""
        if self.prior_motion is None:
            return sample
        if self.residual_scale is not None:
            sample = sample * self.residual_scale.to(sample.dtype)
        return sample + self.prior_motion.to(sample.dtype)

    def repeat_interleave(self, repeats: int) -> "MotionCondition":
        def repeat(name):
            tensor = getattr(self, name)
            if tensor is None or name == "residual_scale":  # one per-frame scale, shared by every sample
                return tensor
            return tensor.repeat_interleave(repeats, dim=0)

        return MotionCondition(**{name: repeat(name) for name in self.__dataclass_fields__})


@dataclass
class RolloutAnchor:
    """For ``rollout_reference="observed"``: the last observed frame ``reference`` (B, C, H, W), and the motion
    that warps it into the next window's reference, the last frame decoded so far: ``flow`` (B, 2, h, w) and
    ``occlusion`` (B, 1, h, w) or None."""

    reference: torch.Tensor
    flow: torch.Tensor
    occlusion: Optional[torch.Tensor]


def flow_to_latents(flow: torch.Tensor, motion_latent_scale: Optional[float]) -> torch.Tensor:
    """The flow channels of the denoiser's latents from flow grids (..., 2, h, w): the grid itself (``None``, the
    original), or ``motion_latent_scale`` times its displacement from the identity grid."""
    if motion_latent_scale is None:
        return flow
    return (flow - _identity_grid(flow)) * motion_latent_scale


def latents_to_flow(latent_flow: torch.Tensor, motion_latent_scale: Optional[float]) -> torch.Tensor:
    """Inverse of :func:`flow_to_latents`."""
    if motion_latent_scale is None:
        return latent_flow
    return latent_flow / motion_latent_scale + _identity_grid(latent_flow)


def _identity_grid(flow: torch.Tensor) -> torch.Tensor:
    """The identity warp (2, h, w) in the flow's convention (x, y in [-1, 1]), broadcastable over (..., 2, h, w)."""
    return make_coordinate_grid(*flow.shape[-2:], device=flow.device, dtype=flow.dtype).permute(2, 0, 1)


def flow_and_occlusion(motion: torch.Tensor, use_occlusion: bool, motion_latent_scale: Optional[float]):
    """Motion in the denoiser's convention (B, 3, T, h, w) -> flow grids (B, T, 2, h, w) and occlusion maps
    (B, T, 1, h, w) in [0, 1] (None without occlusion), as the autoencoder decodes them."""
    motion = motion.transpose(1, 2)
    occlusion = (motion[:, :, 2:3] + 1) * 0.5 if use_occlusion else None
    return latents_to_flow(motion[:, :, :2], motion_latent_scale), occlusion


def clamp_latents(latents: torch.Tensor, motion_latent_scale: Optional[float]) -> torch.Tensor:
    """Latents (B, 3, T, h, w) whose flow grids lie in [-1, 1] and whose occlusion channel in [-1, 1], as the
    original's sampler ends (on a thresholded x0 in [-1, 1])."""
    if motion_latent_scale is None:
        return latents.clamp(-1, 1)
    flow = latents_to_flow(latents[:, :2].transpose(1, 2), motion_latent_scale).clamp(-1, 1)
    return torch.cat([flow_to_latents(flow, motion_latent_scale).transpose(1, 2), latents[:, 2:].clamp(-1, 1)], dim=1)


def encode_condition(
    flow_autoencoder: FlowAutoencoder,
    frames: torch.Tensor,
    num_cond_frames: int,
    num_feature_frames: int,
    use_occlusion: bool = True,
    motion_latent_scale: Optional[float] = None,
    motion_prior: Optional[str] = None,
    num_pred_frames: Optional[int] = None,
    residual_scaling: Optional[str] = None,
) -> MotionCondition:
    """The denoiser's condition from ``frames`` (B, T, C, H, W): the first ``num_cond_frames`` are observed, the
    last of them is the reference; frames after them (training clips) become ``future_motion``. All T frames go
    through the autoencoder in one batched call (features of the observed frames only). ``motion_prior``
    ``"constant_velocity"``: ``prior_motion`` over ``num_pred_frames`` frames is ``FlowAutoencoder.extrapolate``
    from the last two observed frames; ``residual_scaling`` ``"by_frame"`` divides the k-th frame's residual from it
    by k (``residual_scale``). Training and sampling both build the condition here."""
    check_residual_scaling(residual_scaling, motion_prior, "residual_scaling")  # before the autoencoder's work
    reference = frames[:, num_cond_frames - 1]
    encoded = flow_autoencoder.encode(frames, reference, feature_frames=num_cond_frames)
    occlusion = encoded.occlusion_map if use_occlusion else None
    motion = motion_latents(encoded.optical_flow, occlusion, motion_latent_scale)
    prior_motion = None
    if motion_prior is not None:
        check_motion_prior(motion_prior, num_cond_frames)
        if not num_pred_frames:
            raise ValueError(f"`num_pred_frames` must be given with `motion_prior` {motion_prior!r}, got {num_pred_frames!r}")
        guess = extrapolate_observed(flow_autoencoder, reference, encoded.region_params, frames.shape[1], num_cond_frames,
                                     num_pred_frames, motion_prior)
        prior_motion = motion_latents(guess.optical_flow, guess.occlusion_map if use_occlusion else None,
                                      motion_latent_scale)
    residual_scale = None
    if residual_scaling is not None:
        residual_scale = torch.arange(1, num_pred_frames + 1, device=motion.device, dtype=motion.dtype).view(1, 1, -1, 1, 1)
    features = encoded.features
    observed = features[:, : num_cond_frames - 1]
    repeats = num_feature_frames - observed.shape[1]
    features = torch.cat([observed, features[:, num_cond_frames - 1 : num_cond_frames].expand(-1, repeats, -1, -1, -1)], dim=1)
    return MotionCondition(
        reference=reference,
        cond_motion=motion[:, :, :num_cond_frames],
        cond_features=features.transpose(1, 2),
        flow=encoded.optical_flow,
        occlusion=occlusion,
        future_motion=motion[:, :, num_cond_frames:] if frames.shape[1] > num_cond_frames else None,
        prior_motion=prior_motion,
        residual_scale=residual_scale,
    )


def extrapolate_observed(flow_autoencoder: FlowAutoencoder, reference: torch.Tensor, region_params,
                         num_encoded_frames: int, num_cond_frames: int, num_frames: int, motion_prior: Optional[str]):
    """``motion_prior``'s guess of ``num_frames`` frames after the observed ones: ``FlowAutoencoder.extrapolate`` from
    the last two observed frames' regions (``region_params`` of ``encode`` over ``num_encoded_frames`` frames), with
    the prior's reflection (``None``: unbounded)."""
    return flow_autoencoder.extrapolate(
        reference, region_params.frame(num_cond_frames - 2, num_encoded_frames),
        region_params.frame(num_cond_frames - 1, num_encoded_frames), num_frames,
        reflect_extent=MOTION_PRIORS.get(motion_prior))


def motion_latents(flow: torch.Tensor, occlusion: Optional[torch.Tensor], motion_latent_scale: Optional[float]) -> torch.Tensor:
    """The denoiser's motion (B, 3, T, h, w) from flow grids (B, T, 2, h, w) and occlusion maps (B, T, 1, h, w) in
    [0, 1]: the flow channels as ``flow_to_latents``, then 2·occlusion−1, zeros without occlusion (as the original
    conditions where it does not use occlusion)."""
    occlusion_channel = torch.zeros_like(flow[:, :, :1]) if occlusion is None else occlusion * 2 - 1
    return torch.cat([flow_to_latents(flow, motion_latent_scale), occlusion_channel], dim=2).transpose(1, 2)


class ExtDMPipeline(DiffusionPipeline):
    r"""Video prediction with ExtDM.

    Components: ``flow_autoencoder`` (``FlowAutoencoder``), ``unet`` (``ExtDMUNet3DModel``) and ``scheduler``
    (``ExtDMDDIMScheduler``, the original sampler, or any diffusers scheduler made with ``from_config``).
    """

    model_cpu_offload_seq = "flow_autoencoder->unet"
    _callback_tensor_inputs = ["latents", "cond_motion", "cond_features"]

    def __init__(self, flow_autoencoder: FlowAutoencoder, unet: ExtDMUNet3DModel, scheduler,
                 benchmark: Optional[Dict[str, Any]] = None, rollout_reference: str = DEFAULT_ROLLOUT_REFERENCE):
        super().__init__()
        self.check_rollout_reference(rollout_reference)
        self.register_modules(flow_autoencoder=flow_autoencoder, unet=unet, scheduler=scheduler)
        # the complete definition of the benchmark it was trained or converted for (``Benchmark.to_dict``): saved in
        # model_index.json and passed back on load, so that evaluation and prediction need no --benchmark; and how
        # the pipeline rolls out by default (``__call__``'s ``rollout_reference``)
        self.register_to_config(benchmark=None if benchmark is None else dict(benchmark), rollout_reference=rollout_reference)
        mono = flow_autoencoder is not None and flow_autoencoder.config.num_channels == 1
        self.video_processor = VideoProcessor(do_resize=False, do_normalize=False, do_convert_rgb=not mono, do_convert_grayscale=mono)

    # ---------------------------------------------------------------------------------------------------
    @property
    def benchmark(self) -> Optional["Benchmark"]:
        """The ``Benchmark`` this pipeline records (``benchmark`` of its config), or None."""
        from ..benchmarks import Benchmark

        recorded = self.config.get("benchmark")
        return None if recorded is None else Benchmark.from_dict(recorded)

    @staticmethod
    def check_rollout_reference(rollout_reference: str) -> None:
        if rollout_reference not in ROLLOUT_REFERENCES:
            raise ValueError(f"`rollout_reference` must be one of {ROLLOUT_REFERENCES}, got {rollout_reference!r}")

    def resolve_rollout_reference(self, rollout_reference: Optional[str]) -> str:
        """``rollout_reference`` of ``__call__``: ``None`` means the pipeline's config (``"last_decoded"`` unless
        it was made with another)."""
        rollout_reference = self.config.get("rollout_reference", DEFAULT_ROLLOUT_REFERENCE) if rollout_reference is None else rollout_reference
        self.check_rollout_reference(rollout_reference)
        return rollout_reference

    @property
    def num_cond_frames(self) -> int:
        return self.unet.config.num_cond_frames

    @property
    def num_pred_frames(self) -> int:
        return self.unet.config.num_pred_frames

    @property
    def num_timesteps(self) -> int:
        """Denoiser calls of the last ``__call__`` (all windows)."""
        return self._num_timesteps

    def save_pretrained(self, save_directory: Union[str, os.PathLike], *args, **kwargs):
        """``DiffusionPipeline.save_pretrained``, plus a one-line module that lets diffusers' generic loader find
        this out-of-tree class: ``DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline_extdm",
        trust_remote_code=True)``. ``ExtDMPipeline.from_pretrained(folder)`` needs neither."""
        super().save_pretrained(save_directory, *args, **kwargs)
        Path(save_directory, PIPELINE_MODULE_FILE).write_text(_PIPELINE_MODULE_SOURCE)

    def preprocess_video(self, video: VideoInput) -> torch.Tensor:
        """Any accepted video input -> float tensor (B, T, C, H, W) in [0, 1] with the autoencoder's channels.

        The forms of diffusers' ``VideoProcessor.preprocess_video``: a tensor (T, C, H, W) or (B, T, C, H, W), a
        numpy array (T, H, W, C) or (B, T, H, W, C), a list of PIL images (one video), and a batch as a list of
        any of these. PIL frames go through ``VideoProcessor``; every input is then checked here (finite, in
        [0, 1], the model's frame count and size), which ``VideoProcessor`` does not do."""
        channels = self.flow_autoencoder.config.num_channels
        if isinstance(video, PIL.Image.Image):
            raise ValueError("`video` must hold several frames: a list of PIL images, not a single image")
        if isinstance(video, (list, tuple)) and video and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in video):
            video = self._stack_videos([self._video_to_tensor(v, channels) for v in video])
        elif isinstance(video, (list, tuple)):
            video = self._pil_video_to_tensor(list(video))
        video = self._video_to_tensor(video, channels)
        if video.shape[2] == 1 and channels == 3:
            video = video.expand(-1, -1, 3, -1, -1)  # grayscale shown as RGB, as the original datasets do
        if video.shape[2] != channels:
            raise ValueError(f"`video` has {video.shape[2]} channels, the autoencoder expects {channels} (or 1, grayscale)")
        if video.shape[1] != self.num_cond_frames:
            raise ValueError(
                f"`video` must hold exactly the {self.num_cond_frames} conditioning frames this model was trained "
                f"with, got {video.shape[1]}; pass e.g. video[:, -{self.num_cond_frames}:]"
            )
        size = self.flow_autoencoder.config.sample_size
        if size is not None and tuple(video.shape[-2:]) != (size, size):
            raise ValueError(f"`video` frames must be {size}x{size} (the autoencoder's training size), got "
                             f"{video.shape[-2]}x{video.shape[-1]}; resize them first")
        return video

    def _pil_video_to_tensor(self, video: list) -> torch.Tensor:
        """One video (a list of PIL images) or a batch (a list of lists) -> (B, T, C, H, W) through diffusers'
        ``VideoProcessor`` (which converts the mode to the autoencoder's channels and scales to [0, 1])."""
        if len(video) == 0:
            raise ValueError("`video` is an empty list")
        videos = [video] if isinstance(video[0], PIL.Image.Image) else video
        if not all(isinstance(v, (list, tuple)) and v and all(isinstance(f, PIL.Image.Image) for f in v) for v in videos):
            raise ValueError("`video` as a list must hold PIL images (one video), or a batch: lists of PIL images, "
                             "(T, C, H, W) tensors or (T, H, W, C) numpy arrays")
        sizes = sorted({f.size for v in videos for f in v})
        if len(sizes) > 1:
            raise ValueError(f"`video` PIL images must all have the same size, got (width, height) sizes {sizes}")
        return self.video_processor.preprocess_video([list(v) for v in videos]).transpose(1, 2)

    def _video_to_tensor(self, video, channels: int) -> torch.Tensor:
        """One video or a batch, as a tensor or a numpy array -> a checked (B, T, C, H, W) tensor."""
        if isinstance(video, np.ndarray):
            video = self._numpy_video_to_tensor(video, channels)
        if not isinstance(video, torch.Tensor):
            raise TypeError(f"`video` must be a torch tensor, a numpy array or PIL images, got {type(video).__name__}")
        if video.ndim == 4:  # one video (T, C, H, W), as VideoProcessor takes it
            video = video[None]
        self._check_video_tensor(video)
        return video

    @staticmethod
    def _stack_videos(videos: List[torch.Tensor]) -> torch.Tensor:
        """A batch given as a list of (B_i, T, C, H, W) videos -> one (sum B_i, T, C, H, W) tensor."""
        shapes = sorted({tuple(v.shape[1:]) for v in videos})
        if len(shapes) > 1:
            raise ValueError(f"`video` as a list must hold videos of one shape, got (T, C, H, W) shapes {shapes}")
        return torch.cat([v.to(videos[0].dtype) for v in videos])

    @staticmethod
    def _numpy_video_to_tensor(video: np.ndarray, channels: int) -> torch.Tensor:
        """(T, H, W, C) or (B, T, H, W, C) uint8 (0-255) or float (0-1) -> (B, T, C, H, W). Not through
        ``VideoProcessor``: it takes every array as floats in [0, 1] (uint8 frames would stay 0-255) and cannot
        tell a channels-first array, which this names."""
        if video.ndim == 4:
            video = video[None]
        if video.ndim != 5:
            raise ValueError(f"`video` as a numpy array must be (T, H, W, C) or (B, T, H, W, C), got shape {video.shape}")
        if video.shape[-1] not in (1, channels) and video.shape[2] in (1, channels):
            raise ValueError(
                f"`video` as a numpy array must be channels-last (B, T, H, W, C), got shape {video.shape}, which "
                "looks channels-first; use video.transpose(0, 1, 3, 4, 2), or pass a torch tensor (B, T, C, H, W)"
            )
        if video.dtype == np.uint8:
            tensor = torch.from_numpy(video).float() / 255.0
        elif np.issubdtype(video.dtype, np.floating):
            tensor = torch.from_numpy(video.astype(np.float32))
        else:
            raise ValueError(f"`video` as a numpy array must be uint8 (0-255) or float (0-1), got {video.dtype}")
        return tensor.permute(0, 1, 4, 2, 3)

    @staticmethod
    def _check_video_tensor(video: torch.Tensor) -> None:
        if video.ndim != 5:
            raise ValueError(f"`video` as a tensor must be (T, C, H, W) or (B, T, C, H, W), got shape {tuple(video.shape)}")
        if video.numel() == 0:
            raise ValueError(f"`video` is empty, got shape {tuple(video.shape)}")
        if not video.is_floating_point():
            raise ValueError(f"`video` as a tensor must be floating point in [0, 1], got {video.dtype}")
        if not torch.isfinite(video).all():
            raise ValueError("`video` holds NaN or infinite values; frames must be finite, in [0, 1]")
        low, high = float(video.min()), float(video.max())
        if low < 0 or high > 1:
            raise ValueError(f"`video` values must lie in [0, 1], got [{low:.3g}, {high:.3g}]")

    def check_inputs(self, num_frames, num_samples_per_video, eta, output_type, generator, batch_size,
                     callback_on_step_end, callback_on_step_end_tensor_inputs) -> None:
        if output_type not in ("pt", "np", "pil", "latent"):
            raise ValueError(f"`output_type` must be 'pt', 'np', 'pil' or 'latent', got {output_type!r}")
        for name, value in (("num_frames", num_frames), ("num_samples_per_video", num_samples_per_video)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"`{name}` must be an integer, got {value!r}")
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}")
        if not eta >= 0:
            raise ValueError(f"`eta` must be >= 0 (0: deterministic DDIM, 1: the original's sampling), got {eta}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"`generator` as a list needs one generator per predicted video, B x num_samples_per_video = "
                f"{batch_size}, got {len(generator)}"
            )
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"`callback_on_step_end` must be callable, got {type(callback_on_step_end).__name__}")
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, got {sorted(unknown)}")

    def encode_condition(self, frames: torch.Tensor, use_occlusion: bool = True) -> MotionCondition:
        """The denoiser's condition from ``frames`` (B, num_cond_frames [+ K], C, H, W); see ``encode_condition``."""
        return encode_condition(self.flow_autoencoder, frames, self.num_cond_frames, self.unet.num_feature_frames, use_occlusion,
                                self.unet.config.motion_latent_scale, self.unet.config.motion_prior, self.num_pred_frames,
                                self.unet.config.motion_prior_residual_scaling)

    def resolve_use_occlusion(self, use_occlusion: Optional[bool]) -> bool:
        """``use_occlusion`` of ``__call__``: ``None`` means whether the autoencoder estimates occlusion maps."""
        if use_occlusion is None:
            return self.flow_autoencoder.estimates_occlusion
        if use_occlusion and not self.flow_autoencoder.estimates_occlusion:
            raise ValueError("`use_occlusion=True` needs an autoencoder that estimates occlusion maps; this one does not")
        return bool(use_occlusion)

    @torch.no_grad()
    def decode_latents(self, video: VideoInput, latents: torch.Tensor, use_occlusion: Optional[bool] = None,
                       output_type: str = "np", rollout_reference: Optional[str] = None):
        """Frames from the ``output_type="latent"`` output ``latents`` (N, 3, T, h, w) of ``__call__(video, ...)``,
        decoded window by window as ``__call__`` decodes them (with the same ``rollout_reference``), as
        ``output_type`` ``"pt"``, ``"np"`` or ``"pil"``. N is the videos times ``num_samples_per_video``."""
        if output_type not in ("pt", "np", "pil"):
            raise ValueError(f"`output_type` must be 'pt', 'np' or 'pil', got {output_type!r}")
        frames = self.preprocess_video(video)
        use_occlusion = self.resolve_use_occlusion(use_occlusion)
        rollout_reference = self.resolve_rollout_reference(rollout_reference)
        batch = frames.shape[0]
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[1] != 3 or latents.shape[0] % batch:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"`latents` must have shape (N, 3, T, h, w) with N a multiple of the {batch} videos, got {shape}")
        device = self._execution_device
        frames = frames.to(device=device, dtype=self.flow_autoencoder.dtype)
        condition = self.encode_condition(frames, use_occlusion).repeat_interleave(latents.shape[0] // batch)
        if latents.shape[-2:] != condition.cond_motion.shape[-2:]:
            raise ValueError(f"`latents` frames must be {tuple(condition.cond_motion.shape[-2:])} (the motion size), "
                             f"got {tuple(latents.shape[-2:])}")
        pred, num_frames = self.num_pred_frames, latents.shape[2]
        latents = latents.to(device=device, dtype=self.flow_autoencoder.dtype)
        decoded_windows, anchor = [], None
        for start in range(0, num_frames, pred):
            decoded, anchor = self.decode_window(condition, latents[:, :, start : start + pred], use_occlusion,
                                                 rollout_reference, anchor)
            decoded_windows.append(decoded)
            if start + pred < num_frames:
                condition = self.next_window_condition(condition, decoded, use_occlusion)
        self.maybe_free_model_hooks()
        return self.postprocess(decoded_windows, num_frames, output_type)

    def decode_motion(self, reference: torch.Tensor, motion: torch.Tensor, use_occlusion: bool = True) -> torch.Tensor:
        """Frames (B, T, C, H, W) from predicted motion (B, 3, T, h, w) in one batched decoder call; without
        occlusion the frames are plain warps of the reference, as the original evaluation of KTH and BAIR."""
        flow, occlusion = flow_and_occlusion(motion, use_occlusion, self.unet.config.motion_latent_scale)
        return self.flow_autoencoder.decode(reference, flow, occlusion).sample

    def decode_window(self, condition: MotionCondition, motion: torch.Tensor, use_occlusion: bool, rollout_reference: str,
                      anchor: Optional[RolloutAnchor] = None):
        """One window's frames (B, T, C, H, W) from its motion (B, 3, T, h, w), and the next window's anchor
        (``rollout_reference="observed"``; None for ``"last_decoded"``). Without ``anchor`` (the first window, and
        every window for ``"last_decoded"``) the frames warp ``condition.reference``; with it they warp the last
        observed frame by the motion composed with the anchor's."""
        flow, occlusion = flow_and_occlusion(motion, use_occlusion, self.unet.config.motion_latent_scale)
        reference = condition.reference
        if anchor is not None:
            flow, occlusion = compose_motion(anchor.flow, anchor.occlusion, flow, occlusion)
            reference = anchor.reference
        frames = self.flow_autoencoder.decode(reference, flow, occlusion).sample
        if rollout_reference != "observed":
            return frames, None
        # the next window's reference is this window's last frame (``next_window_condition``)
        return frames, RolloutAnchor(reference, flow[:, -1], None if occlusion is None else occlusion[:, -1])

    def check_latents(self, latents: Optional[torch.Tensor], batch_size: int, motion_size, num_windows: int, dtype, device):
        """User-given initial noise, for the first window or for all of them; None draws it per window."""
        shape = (batch_size, 3, self.num_pred_frames, *motion_size)
        if latents is None:
            return None
        allowed = [shape, shape[:2] + (self.num_pred_frames * num_windows,) + shape[3:]]
        if tuple(latents.shape) not in allowed:
            raise ValueError(f"`latents` must have shape {allowed[0]} (first window) or {allowed[1]} (every window), "
                             f"got {tuple(latents.shape)}")
        return latents.to(device=device, dtype=dtype)

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict:
        """``eta`` and ``generator`` for schedulers whose ``step`` takes them."""
        parameters = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in parameters:
            kwargs["eta"] = eta
        if "generator" in parameters:
            kwargs["generator"] = generator
        return kwargs

    def prepare_latents(
        self, latents: Optional[torch.Tensor], window: int, batch_size: int, motion_size, generator, device, dtype
    ) -> torch.Tensor:
        """Initial noise of ``window``: the user's (see ``check_latents``), else drawn from ``generator``."""
        pred = self.num_pred_frames
        if latents is not None and (window == 0 or latents.shape[2] > pred):
            sample = latents[:, :, window * pred : (window + 1) * pred]
        else:
            sample = randn_tensor((batch_size, 3, pred, *motion_size), generator=generator, device=device, dtype=dtype)
        return sample * self.scheduler.init_noise_sigma

    def denoise_window(
        self,
        sample: torch.Tensor,
        condition: MotionCondition,
        window: int,
        num_windows: int,
        num_inference_steps: int,
        extra_step_kwargs: dict,
        callback_on_step_end: Optional[Callable],
        callback_on_step_end_tensor_inputs: List[str],
        progress_bar,
    ) -> torch.Tensor:
        """The step loop of one window: the future motion denoised from ``sample`` under ``condition``, clamped
        to [-1, 1]."""
        dtype, latent_dtype = self.unet.dtype, sample.dtype
        if window > 0:
            self.scheduler.set_timesteps(num_inference_steps, device=sample.device)  # multistep solvers keep state
        timesteps = self.scheduler.timesteps
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        cond_motion = condition.cond_motion.to(dtype)
        cond_features = condition.cond_features.to(dtype)
        prior_motion = condition.prior_motion.to(dtype) if self.unet.config.motion_prior_input else None
        # what the U-Net computes from the condition alone: once per window, not at every step
        unet_condition = self.unet.prepare_condition(cond_motion, cond_features, prior_motion)
        finite = []  # checked once the window is done: a check per step would wait for the device at every step
        for i, t in enumerate(timesteps):
            model_input = self.scheduler.scale_model_input(sample, t)
            noise_pred = self.unet(model_input.to(dtype), t, cond_motion, cond_features, condition=unet_condition).sample
            sample = self.scheduler.step(noise_pred.to(latent_dtype), t, sample, **extra_step_kwargs).prev_sample
            finite.append(torch.isfinite(sample).all())
            if callback_on_step_end is not None:
                callback_kwargs = {"latents": sample, "cond_motion": cond_motion, "cond_features": cond_features}
                callback_kwargs = {k: callback_kwargs[k] for k in callback_on_step_end_tensor_inputs}
                callback_outputs = callback_on_step_end(self, window * len(timesteps) + i, t, callback_kwargs)
                if not isinstance(callback_outputs, dict):
                    raise TypeError(
                        "`callback_on_step_end` must return a dict (e.g. `callback_kwargs`, or {} to change "
                        f"nothing), got {type(callback_outputs).__name__}"
                    )
                sample = callback_outputs.pop("latents", sample)
            if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                progress_bar.update()
        finite = torch.stack(finite)
        if not finite.all():
            step = int(finite.logical_not().nonzero()[0])
            raise FloatingPointError(
                f"the denoised motion became NaN or infinite in window {window + 1}/{num_windows} at step "
                f"{step + 1}/{len(timesteps)} (timestep {int(timesteps[step])}) with {type(self.scheduler).__name__}"
            )
        # The original's sampler ends on a thresholded x0 in [-1, 1]; keep every scheduler's motion there so that
        # decoding and re-encoding never see grids far outside the frame.
        return clamp_latents(condition.motion_from_sample(sample), self.unet.config.motion_latent_scale)

    def next_window_condition(self, condition: MotionCondition, decoded: torch.Tensor, use_occlusion: bool) -> MotionCondition:
        """The next window's condition: the last ``num_cond_frames`` frames of [the observed frames as the
        autoencoder reconstructs them, the frames predicted so far], as the original evaluation rolls out."""
        cond, pred = self.num_cond_frames, self.num_pred_frames
        if pred >= cond:
            next_frames = decoded[:, -cond:]
        else:
            occlusion = condition.occlusion[:, pred - cond :] if use_occlusion else None
            reconstructed = self.flow_autoencoder.decode(condition.reference, condition.flow[:, pred - cond :], occlusion).sample
            next_frames = torch.cat([reconstructed, decoded], dim=1)
        return self.encode_condition(next_frames, use_occlusion)

    def motion_to_output(self, sample: torch.Tensor) -> torch.Tensor:
        """Denoised motion (B, 3, T, h, w) -> (B, T, 3, h, w): the flow grid and the occlusion in [0, 1]."""
        return torch.cat(flow_and_occlusion(sample, True, self.unet.config.motion_latent_scale), dim=2)

    def postprocess(self, frames: List[torch.Tensor], num_frames: int, output_type: str):
        """Decoded windows -> the first ``num_frames`` frames as ``output_type``."""
        video = torch.cat(frames, dim=1)[:, :num_frames].clamp(0, 1)
        if output_type != "pt":
            video = video.float()
        return self.video_processor.postprocess_video(video.transpose(1, 2), output_type=output_type)

    # ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        video: VideoInput,
        num_frames: Optional[int] = None,
        num_inference_steps: int = 10,
        eta: float = 1.0,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        num_samples_per_video: int = 1,
        use_occlusion: Optional[bool] = None,
        rollout_reference: Optional[str] = None,
        output_type: str = "np",
        return_dict: bool = True,
        return_motion: bool = False,
        callback_on_step_end: Optional[Callable[["ExtDMPipeline", int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ("latents",),
    ):
        r"""
        Predict the frames that follow ``video``.

        Args:
            video: the conditioning frames, exactly ``unet.config.num_cond_frames`` of them: a tensor (B, T, C, H, W)
                in [0, 1], a uint8 numpy array (T, H, W, C) or (B, T, H, W, C), or a list of PIL images. Grayscale
                input is shown to an RGB autoencoder as three equal channels.
            num_frames: future frames to predict; default one window (``unet.config.num_pred_frames``). Longer
                horizons are rolled out window by window, each conditioned on the last ``num_cond_frames`` frames
                decoded so far, as the original evaluation does.
            num_inference_steps: denoising steps per window.
            eta: DDIM noise (the original samples with 1.0; 0.0 is deterministic). Ignored by schedulers without it.
            generator: torch generator, or one per predicted video (B x ``num_samples_per_video``).
            latents: initial noise (N, 3, num_pred_frames, h, w) for the first window, or
                (N, 3, num_windows * num_pred_frames, h, w) for all, N = B * num_samples_per_video; other windows draw
                noise from ``generator``.
            num_samples_per_video: independent predictions per input video.
            use_occlusion: condition on and decode with the autoencoder's occlusion maps. ``None``: when the
                autoencoder estimates them. The original evaluation turns them off for KTH and BAIR (zeros in the
                condition, plain warps of the reference in the decoder); ``benchmarks.get_benchmark(name)
                .evaluation.use_occlusion`` says which.
            rollout_reference: the frame a later window's frames are warps of (``ROLLOUT_REFERENCES``):
                ``"last_decoded"`` (the original) or ``"observed"`` (the last observed frame, the motion composed:
                no blur compounding from window to window). ``None``: the pipeline's config.
            output_type: ``"pt"``, ``"np"``, ``"pil"`` or ``"latent"``: the denoised motion as the denoiser produced
                it, (N, 3, num_frames, h, w) in [-1, 1] like ``latents``, not decoded; ``decode_latents`` decodes it.
            return_motion: also return the predicted motion.
            callback_on_step_end: called as ``callback(pipe, step, timestep, callback_kwargs)`` after every
                denoising step (``step`` counts over all windows); it returns a dict, whose ``"latents"`` replaces
                the current sample.
            callback_on_step_end_tensor_inputs: the tensors in ``callback_kwargs``: any of ``"latents"``,
                ``"cond_motion"``, ``"cond_features"``.
        """
        # 1. Check the inputs.
        num_frames = self.num_pred_frames if num_frames is None else num_frames
        frames = self.preprocess_video(video)
        batch_size = frames.shape[0] * num_samples_per_video if isinstance(num_samples_per_video, int) else 0
        self.check_inputs(num_frames, num_samples_per_video, eta, output_type, generator, batch_size,
                          callback_on_step_end, callback_on_step_end_tensor_inputs)
        use_occlusion = self.resolve_use_occlusion(use_occlusion)
        rollout_reference = self.resolve_rollout_reference(rollout_reference)

        device = self._execution_device
        # The motion is a sampling grid: in bfloat16 its coordinates would round to 1/128 of the frame (a quarter
        # pixel at 64 px) at every step. The scheduler therefore updates it in at least float32, and only the
        # U-Net's input is cast to the U-Net's dtype.
        latent_dtype = torch.promote_types(self.unet.dtype, torch.float32)
        frames = frames.to(device=device, dtype=self.flow_autoencoder.dtype)
        num_windows = -(-num_frames // self.num_pred_frames)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps) * num_windows

        # 2. Encode the observed frames once per video, then share the condition among its samples.
        condition = self.encode_condition(frames, use_occlusion).repeat_interleave(num_samples_per_video)
        motion_size = tuple(condition.cond_motion.shape[-2:])
        latents = self.check_latents(latents, batch_size, motion_size, num_windows, latent_dtype, device)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 3. Window by window: noise, denoise, decode, and condition the next window on what was decoded.
        predicted_frames, predicted_latents, anchor = [], [], None
        with self.progress_bar(total=num_windows * num_inference_steps) as progress_bar:
            for window in range(num_windows):
                sample = self.prepare_latents(latents, window, batch_size, motion_size, generator, device, latent_dtype)
                sample = self.denoise_window(sample, condition, window, num_windows, num_inference_steps, extra_step_kwargs,
                                             callback_on_step_end, callback_on_step_end_tensor_inputs, progress_bar)
                predicted_latents.append(sample)
                last_window = window + 1 == num_windows
                if output_type == "latent" and last_window:
                    break
                decoded, anchor = self.decode_window(condition, sample.to(self.flow_autoencoder.dtype), use_occlusion,
                                                     rollout_reference, anchor)
                predicted_frames.append(decoded)
                if not last_window:
                    condition = self.next_window_condition(condition, decoded, use_occlusion)

        # 4. Outputs.
        latents_out = torch.cat(predicted_latents, dim=2)[:, :, :num_frames]
        motion_out = self.motion_to_output(latents_out) if return_motion or output_type == "latent" else None
        self.maybe_free_model_hooks()
        video_out = latents_out if output_type == "latent" else self.postprocess(predicted_frames, num_frames, output_type)
        if not return_dict:
            return (video_out, motion_out)
        return ExtDMPipelineOutput(frames=video_out, motion=motion_out)
