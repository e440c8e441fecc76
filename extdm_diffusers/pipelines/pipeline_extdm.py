"""ExtDMPipeline: future-frame prediction with ExtDM.

The observed frames are encoded once into motion relative to the last observed frame (the reference) and
bottleneck features; the U-Net denoises the future motion under a diffusers scheduler; the flow
autoencoder decodes all predicted frames in one batched call. Horizons beyond the model's window are
rolled out chunk by chunk exactly as the original evaluation does.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..models.flow_autoencoder import FlowAutoencoder
from ..models.unet_3d_extdm import ExtDMUNet3DModel

VideoInput = Union[torch.Tensor, np.ndarray, List[PIL.Image.Image], List[List[PIL.Image.Image]]]


@dataclass
class ExtDMPipelineOutput(BaseOutput):
    """
    frames: the predicted future frames only, one video per input video and sample (video-major order):
        ``"pt"``: (N, num_frames, C, H, W) in [0, 1]; ``"np"``: (N, num_frames, H, W, C) float32 in [0, 1];
        ``"pil"``: N lists of PIL images.
    motion: with ``return_motion=True``, the predicted motion (N, num_frames, 3, h, w): flow grid x, y in
        [-1, 1] and occlusion in [0, 1]; otherwise None.
    """

    frames: Union[torch.Tensor, np.ndarray, List[List[PIL.Image.Image]]] = None
    motion: Optional[torch.Tensor] = None


class ExtDMPipeline(DiffusionPipeline):
    r"""Video prediction with ExtDM.

    Components: ``flow_autoencoder`` (``FlowAutoencoder``), ``unet`` (``ExtDMUNet3DModel``) and ``scheduler``
    (``ExtDMDDIMScheduler``, the original sampler, or any diffusers scheduler made with ``from_config``).
    """

    model_cpu_offload_seq = "flow_autoencoder->unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, flow_autoencoder: FlowAutoencoder, unet: ExtDMUNet3DModel, scheduler):
        super().__init__()
        self.register_modules(flow_autoencoder=flow_autoencoder, unet=unet, scheduler=scheduler)

    # ---------------------------------------------------------------------------------------------------
    @property
    def num_cond_frames(self) -> int:
        return self.unet.config.num_cond_frames

    @property
    def num_pred_frames(self) -> int:
        return self.unet.config.num_pred_frames

    def preprocess_video(self, video: VideoInput) -> torch.Tensor:
        """Any accepted video input -> float tensor (B, T, C, H, W) in [0, 1] with the autoencoder's channels."""
        if isinstance(video, PIL.Image.Image):
            raise ValueError("`video` must hold several frames: a list of PIL images, not a single image")
        if isinstance(video, (list, tuple)):
            if len(video) == 0:
                raise ValueError("`video` is an empty list")
            if isinstance(video[0], PIL.Image.Image):
                video = [video]
            if not all(isinstance(v, (list, tuple)) and v and all(isinstance(f, PIL.Image.Image) for f in v) for v in video):
                raise ValueError("`video` as a list must hold PIL images (one video) or lists of PIL images (a batch)")
            channels = self.flow_autoencoder.config.num_channels
            mode = "L" if channels == 1 else "RGB"
            video = np.stack([np.stack([np.asarray(f.convert(mode)) for f in v]) for v in video])
            if video.ndim == 4:
                video = video[..., None]
        if isinstance(video, np.ndarray):
            if video.ndim == 4:
                video = video[None]
            if video.ndim != 5:
                raise ValueError(f"`video` as a numpy array must be (T, H, W, C) or (B, T, H, W, C), got shape {video.shape}")
            if video.dtype == np.uint8:
                video = torch.from_numpy(video).float() / 255.0
            elif np.issubdtype(video.dtype, np.floating):
                video = torch.from_numpy(video.astype(np.float32))
            else:
                raise ValueError(f"`video` as a numpy array must be uint8 (0-255) or float (0-1), got {video.dtype}")
            video = video.permute(0, 1, 4, 2, 3)
        if not isinstance(video, torch.Tensor):
            raise TypeError(f"`video` must be a torch tensor, a numpy array or PIL images, got {type(video).__name__}")
        if video.ndim != 5:
            raise ValueError(f"`video` as a tensor must be (B, T, C, H, W), got shape {tuple(video.shape)}")
        if not video.is_floating_point():
            raise ValueError(f"`video` as a tensor must be floating point in [0, 1], got {video.dtype}")
        low, high = float(video.min()), float(video.max())
        if low < 0 or high > 1:
            raise ValueError(f"`video` values must lie in [0, 1], got [{low:.3g}, {high:.3g}]")

        channels = self.flow_autoencoder.config.num_channels
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

    def encode_condition(self, frames: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Motion of ``frames`` (B, cond, C, H, W) relative to the last one, and the U-Net's feature condition:
        the features of the observed frames, then the reference's repeated for the rest of the window."""
        reference = frames[:, -1]
        encoded = self.flow_autoencoder.encode(frames, reference)
        occlusion = encoded.occlusion_map
        if occlusion is None:  # the original conditions on zeros where no occlusion is estimated
            occlusion = torch.full_like(encoded.optical_flow[:, :, :1], 0.5)
        motion = torch.cat([encoded.optical_flow, occlusion * 2 - 1], dim=2)
        features = encoded.features
        observed = features[:, : self.num_cond_frames - 1]
        repeats = self.unet.num_feature_frames - observed.shape[1]
        features = torch.cat([observed, features[:, -1:].expand(-1, repeats, -1, -1, -1)], dim=1)
        return {
            "reference": reference,
            "cond_motion": motion.transpose(1, 2),
            "cond_features": features.transpose(1, 2),
            "flow": encoded.optical_flow,
            "occlusion": occlusion,
        }

    def decode_motion(self, reference: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """Frames (B, T, C, H, W) from predicted motion (B, 3, T, h, w) in one batched decoder call."""
        motion = motion.transpose(1, 2)
        occlusion = (motion[:, :, 2:3] + 1) * 0.5 if self.flow_autoencoder.estimates_occlusion else None
        return self.flow_autoencoder.decode(reference, motion[:, :, :2], occlusion).sample

    def check_latents(self, latents: Optional[torch.Tensor], batch_size: int, motion_size, num_chunks: int, dtype, device):
        """User-given initial noise, for the first window or for all of them; None draws it per window."""
        shape = (batch_size, 3, self.num_pred_frames, *motion_size)
        if latents is None:
            return None
        allowed = [shape, shape[:2] + (self.num_pred_frames * num_chunks,) + shape[3:]]
        if tuple(latents.shape) not in allowed:
            raise ValueError(f"`latents` must have shape {allowed[0]} (first chunk) or {allowed[1]} (every chunk), "
                             f"got {tuple(latents.shape)}")
        return latents.to(device=device, dtype=dtype)

    def _step_kwargs(self, generator, eta: float) -> dict:
        parameters = set(inspect.signature(self.scheduler.step).parameters)
        kwargs = {}
        if "eta" in parameters:
            kwargs["eta"] = eta
        if "generator" in parameters:
            kwargs["generator"] = generator
        return kwargs

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
            generator: torch generator(s) for reproducible sampling.
            latents: initial noise (N, 3, num_pred_frames, h, w) for the first window, or
                (N, 3, num_windows * num_pred_frames, h, w) for all, N = B * num_samples_per_video; other windows draw
                noise from ``generator``.
            num_samples_per_video: independent predictions per input video.
            output_type: ``"pt"``, ``"np"`` or ``"pil"``.
            return_motion: also return the predicted motion.
            callback_on_step_end: called as ``callback(pipe, step, timestep, {"latents": ...})`` after every
                denoising step; a returned ``"latents"`` replaces the current one.
        """
        if output_type not in ("pt", "np", "pil"):
            raise ValueError(f"`output_type` must be 'pt', 'np' or 'pil', got {output_type!r}")
        if num_samples_per_video < 1:
            raise ValueError(f"`num_samples_per_video` must be >= 1, got {num_samples_per_video}")
        if num_frames is None:
            num_frames = self.num_pred_frames
        if num_frames < 1:
            raise ValueError(f"`num_frames` must be >= 1, got {num_frames}")
        unknown_inputs = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown_inputs:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, got {sorted(unknown_inputs)}")

        device = self._execution_device
        dtype = self.unet.dtype
        frames = self.preprocess_video(video).to(device=device, dtype=self.flow_autoencoder.dtype)
        batch_size = frames.shape[0] * num_samples_per_video
        cond, pred = self.num_cond_frames, self.num_pred_frames
        num_chunks = -(-num_frames // pred)

        # 1. Encode the observed frames once per video, then share the condition among its samples.
        condition = self.encode_condition(frames)
        condition = {k: v.repeat_interleave(num_samples_per_video, dim=0) for k, v in condition.items()}
        motion_size = tuple(condition["cond_motion"].shape[-2:])
        latents = self.check_latents(latents, batch_size, motion_size, num_chunks, dtype, device)
        step_kwargs = self._step_kwargs(generator, eta)

        predicted_frames, predicted_motion = [], []
        with self.progress_bar(total=num_chunks * num_inference_steps) as progress_bar:
            for chunk in range(num_chunks):
                # 2. Initial noise of this window.
                given = None
                if latents is not None and (chunk == 0 or latents.shape[2] > pred):
                    given = latents[:, :, chunk * pred : (chunk + 1) * pred]
                noise_shape = (batch_size, 3, pred, *motion_size)
                sample = given if given is not None else randn_tensor(noise_shape, generator=generator, device=device, dtype=dtype)
                sample = sample * self.scheduler.init_noise_sigma
                cond_motion = condition["cond_motion"].to(dtype)
                cond_features = condition["cond_features"].to(dtype)
                # the feature condition does not change during denoising: prepare it once per window
                prepared = self.unet.prepare_features(cond_features, motion_size)

                # 3. Denoise.
                self.scheduler.set_timesteps(num_inference_steps, device=device)
                for i, t in enumerate(self.scheduler.timesteps):
                    model_input = self.scheduler.scale_model_input(sample, t)
                    noise_pred = self.unet(model_input, t, cond_motion, cond_features, precomputed_features=prepared).sample
                    sample = self.scheduler.step(noise_pred, t, sample, **step_kwargs).prev_sample
                    if callback_on_step_end is not None:
                        callback_kwargs = {"latents": sample}
                        callback_outputs = callback_on_step_end(self, chunk * num_inference_steps + i, t, callback_kwargs)
                        sample = callback_outputs.pop("latents", sample)
                    progress_bar.update()

                # 4. Decode the window in one batched call.
                sample = sample.to(self.flow_autoencoder.dtype)
                decoded = self.decode_motion(condition["reference"], sample)
                predicted_frames.append(decoded)
                if return_motion:
                    motion = sample.transpose(1, 2).clone()
                    motion[:, :, 2] = (motion[:, :, 2] + 1) * 0.5
                    predicted_motion.append(motion)

                # 5. Next window: condition on the last `cond` frames of [decoded observed frames, predicted].
                if chunk + 1 < num_chunks:
                    if pred >= cond:
                        next_frames = decoded[:, -cond:]
                    else:
                        occlusion = condition["occlusion"][:, pred - cond :] if self.flow_autoencoder.estimates_occlusion else None
                        reconstructed = self.flow_autoencoder.decode(
                            condition["reference"], condition["flow"][:, pred - cond :], occlusion
                        ).sample
                        next_frames = torch.cat([reconstructed, decoded], dim=1)
                    condition = self.encode_condition(next_frames)

        video_out = torch.cat(predicted_frames, dim=1)[:, :num_frames].clamp(0, 1)
        motion_out = torch.cat(predicted_motion, dim=1)[:, :num_frames] if return_motion else None
        self.maybe_free_model_hooks()

        if output_type == "np":
            video_out = video_out.permute(0, 1, 3, 4, 2).float().cpu().numpy()
        elif output_type == "pil":
            arrays = (video_out.permute(0, 1, 3, 4, 2).float().cpu().numpy() * 255).round().astype(np.uint8)
            video_out = [[PIL.Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in v] for v in arrays]
        if not return_dict:
            return (video_out, motion_out)
        return ExtDMPipelineOutput(frames=video_out, motion=motion_out)
