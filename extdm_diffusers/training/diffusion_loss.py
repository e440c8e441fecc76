"""Training loss of the ExtDM denoiser (the original ``GaussianDiffusion.p_losses``, ``loss_type="l2"``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from diffusers.training_utils import compute_snr
from diffusers.utils import BaseOutput
from torch import nn

from ..schedulers.scheduling_extdm_ddim import PREDICTION_TYPES


@dataclass
class DenoisingLossOutput(BaseOutput):
    """``loss``: the scalar to backpropagate. ``model_output``: the denoiser's prediction (noise or velocity,
    ``(B, 3, P, h, w)``), for metrics computed from the same forward."""

    loss: torch.Tensor
    model_output: torch.Tensor


def _check_timesteps(timesteps: torch.Tensor, num_train_timesteps: int) -> None:
    in_range = ((timesteps >= 0) & (timesteps < num_train_timesteps)).all()
    message = f"`timesteps` must lie in [0, {num_train_timesteps})"
    if timesteps.device.type == "cuda":
        torch._assert_async(in_range, message)  # reading the result back would stall every training step
    elif not in_range:
        raise ValueError(f"{message}, got {timesteps.tolist()}")


def denoising_loss(
    unet: nn.Module,
    scheduler,
    clean_motion: torch.Tensor,
    cond_motion: torch.Tensor,
    cond_features: torch.Tensor,
    timesteps: Union[torch.Tensor, int],
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    snr_gamma: Optional[float] = None,
    prior_motion: Optional[torch.Tensor] = None,
) -> DenoisingLossOutput:
    """MSE of the predicted noise (or velocity, or clean motion, per the scheduler's ``prediction_type``) on the
    predicted frames.

    ``clean_motion`` (B, 3, P, h, w), the future motion, is noised to ``timesteps`` with ``scheduler.add_noise``
    (an ``ExtDMDDIMScheduler``: the original's q_sample); the denoiser sees the clean ``cond_motion`` and
    ``cond_features`` (as in ``ExtDMUNet3DModel.forward``) and predicts the noise of the P frames (the
    original), or their velocity sqrt(ᾱ) ε − sqrt(1 − ᾱ) x0 when ``scheduler.config.prediction_type`` is
    ``"v_prediction"``, or the clean motion x0 itself for ``"sample"``. Without ``snr_gamma`` the loss is a plain
    mean over everything (``F.mse_loss``), as the original: no per-timestep weighting.

    ``timesteps``: (B,) integers in [0, num_train_timesteps) (the original draws them uniformly) or one int.
    ``noise``: defaults to a standard normal draw with ``generator``.
    ``prior_motion``: the guessed window's motion, for a denoiser that reads it (``motion_prior_input``).
    ``snr_gamma``: Min-SNR-γ weighting (Hang et al. 2023, diffusers' ``--snr_gamma``): each sample's MSE is
    weighted by min(SNR(t), γ) / SNR(t) (ε), min(SNR(t), γ) / (SNR(t) + 1) (v) or min(SNR(t), γ) (x0), so the
    nearly noise-free steps, where the noise is hard to predict and matters little, stop dominating the gradient.
    ``None`` (the original): the plain mean.

    Returns a ``DenoisingLossOutput``: the loss and the prediction it was computed from. On CUDA the timestep
    range is checked on the device (a bad value fails at the next synchronisation), elsewhere before the call.
    """
    if not isinstance(clean_motion, torch.Tensor) or clean_motion.ndim != 5:
        got = tuple(clean_motion.shape) if isinstance(clean_motion, torch.Tensor) else type(clean_motion).__name__
        raise ValueError(f"`clean_motion` must have shape (B, 3, P, h, w), got {got}")
    batch = clean_motion.shape[0]
    timesteps = torch.as_tensor(timesteps, device=clean_motion.device).long()
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(batch)
    if timesteps.shape != (batch,):
        raise ValueError(f"`timesteps` must be one integer or shape ({batch},) like `clean_motion`'s batch, got {tuple(timesteps.shape)}")
    _check_timesteps(timesteps, scheduler.config.num_train_timesteps)
    if noise is None:
        noise = torch.randn(clean_motion.shape, generator=generator, device=getattr(generator, "device", None) or clean_motion.device,
                            dtype=clean_motion.dtype).to(clean_motion.device)
    elif noise.shape != clean_motion.shape:
        raise ValueError(f"`noise` must have the shape of `clean_motion` {tuple(clean_motion.shape)}, got {tuple(noise.shape)}")

    if snr_gamma is not None and snr_gamma <= 0:
        raise ValueError(f"`snr_gamma` must be > 0 (or None for no weighting), got {snr_gamma}")
    prediction_type = scheduler.config.prediction_type
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"the scheduler's `prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    if prediction_type == "v_prediction":
        target = scheduler.get_velocity(clean_motion, noise, timesteps)
    else:
        target = clean_motion if prediction_type == "sample" else noise
    noisy = scheduler.add_noise(clean_motion, noise, timesteps)
    prior = {} if prior_motion is None else {"prior_motion": prior_motion}  # stock denoisers take no such argument
    predicted = unet(noisy, timesteps, cond_motion=cond_motion, cond_features=cond_features, **prior).sample
    if snr_gamma is None:
        return DenoisingLossOutput(loss=F.mse_loss(predicted, target), model_output=predicted)
    snr = compute_snr(scheduler, timesteps)
    # min(SNR, γ) weights the x0 error; in ε units that is min(SNR, γ) / SNR, in v units min(SNR, γ) / (SNR + 1)
    denominators = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}
    weights = snr.clamp(max=snr_gamma) / denominators[prediction_type]
    per_sample = F.mse_loss(predicted.float(), target.float(), reduction="none").mean(dim=tuple(range(1, predicted.ndim)))
    return DenoisingLossOutput(loss=(per_sample * weights).mean(), model_output=predicted)


__all__ = ["DenoisingLossOutput", "denoising_loss"]
