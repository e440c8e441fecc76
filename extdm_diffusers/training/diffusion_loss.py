"""Training loss of the ExtDM denoiser (the original ``GaussianDiffusion.p_losses``, ``loss_type="l2"``)."""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn


def denoising_loss(
    unet: nn.Module,
    scheduler,
    clean_motion: torch.Tensor,
    cond_motion: torch.Tensor,
    cond_features: torch.Tensor,
    timesteps: Union[torch.Tensor, int],
    noise: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Epsilon-prediction MSE on the predicted frames.

    ``clean_motion`` (B, 3, P, h, w), the future motion, is noised to ``timesteps`` with ``scheduler.add_noise``
    (an ``ExtDMDDIMScheduler``: the original's q_sample); the denoiser sees the clean ``cond_motion`` and
    ``cond_features`` (as in ``ExtDMUNet3DModel.forward``) and predicts the noise of the P frames. The loss is a
    plain mean over everything (``F.mse_loss``), as the original: no per-timestep weighting.

    ``timesteps``: (B,) integers in [0, num_train_timesteps) (the original draws them uniformly) or one int.
    ``noise``: defaults to a standard normal draw with ``generator``.
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
    num_train_timesteps = scheduler.config.num_train_timesteps
    if int(timesteps.min()) < 0 or int(timesteps.max()) >= num_train_timesteps:
        raise ValueError(f"`timesteps` must lie in [0, {num_train_timesteps}), got {timesteps.tolist()}")
    if noise is None:
        noise = torch.randn(clean_motion.shape, generator=generator, device=getattr(generator, "device", None) or clean_motion.device,
                            dtype=clean_motion.dtype).to(clean_motion.device)
    elif noise.shape != clean_motion.shape:
        raise ValueError(f"`noise` must have the shape of `clean_motion` {tuple(clean_motion.shape)}, got {tuple(noise.shape)}")

    noisy = scheduler.add_noise(clean_motion, noise, timesteps)
    predicted = unet(noisy, timesteps, cond_motion=cond_motion, cond_features=cond_features).sample
    return F.mse_loss(predicted, noise)


__all__ = ["denoising_loss"]
