"""The original ExtDM DDIM sampler as a diffusers scheduler.

Stock ``DDIMScheduler`` cannot be configured to match it, for two reasons:
- time grid: the original calls the denoiser at ``int(linspace(0, T, steps + 2))[:-1]`` reversed, without
  the final 0 (T=1000, 10 steps: 909, 818, ..., 90) and steps to the next value of that list;
- alpha indexing: the DDIM update uses ``alphas_cumprod_prev[t]`` and ``alphas_cumprod_prev[t_next]`` (one
  index earlier than ``alphas_cumprod``; ``alphas_cumprod_prev[0] = 1``), while x0 is predicted from epsilon
  with ``alphas_cumprod[t]``.
The schedule itself is the original's cosine schedule (s = 0.008, betas clipped to 0.9999, computed in
float64; both constants of the original, not config), and x0 is dynamically thresholded at the 0.9 quantile
of |x0| per sample, clamped below at 1 (``sample_max_value`` is a bound far above any motion value: in effect
none).

The config holds only names stock schedulers read (``num_train_timesteps``, ``beta_schedule``,
``prediction_type``, ``thresholding``, ...), so ``DDIMScheduler.from_config(pipe.scheduler.config)`` and the
other schedulers listed in ``_compatibles`` work on an ExtDM pipeline, without a warning about unexpected
config attributes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor


@dataclass
class ExtDMDDIMSchedulerOutput(BaseOutput):
    """prev_sample: x at the next time. pred_original_sample: the thresholded x0 prediction."""

    prev_sample: torch.Tensor = None
    pred_original_sample: Optional[torch.Tensor] = None


def original_cosine_alphas_cumprod(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.9999) -> torch.Tensor:
    """alphas_cumprod of the original cosine schedule, float64."""
    x = torch.linspace(0, num_train_timesteps, num_train_timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / num_train_timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = torch.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0, max_beta)
    return torch.cumprod(1.0 - betas, dim=0)


# "epsilon": the original (the released checkpoints). "v_prediction" (Salimans & Ho 2022): the denoiser predicts
# sqrt(ᾱ) ε − sqrt(1 − ᾱ) x0, which is nearly −x0 at high noise, where ε-prediction must reproduce its noisy
# input almost exactly and, trained briefly, yields poor x0 and a chain that never recovers. "sample": it predicts
# x0 itself, whose MSE optimum is the conditional mean of the clean motion.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class ExtDMDDIMScheduler(SchedulerMixin, ConfigMixin):
    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1
    _TABLES = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
               "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod")

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "epsilon",
        thresholding: bool = True,
        dynamic_thresholding_ratio: float = 0.9,
        sample_max_value: float = 1e9,
        clip_sample: bool = False,
    ):
        # Registered by the public method, not the `@register_to_config` decorator: the decorator also records
        # which fields were left at their defaults (`_use_default_values`), and another scheduler's
        # `from_config` replaces those with its own defaults. Every field here defines the ExtDM schedule.
        self.register_to_config(
            num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type=prediction_type,
            thresholding=thresholding, dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            sample_max_value=sample_max_value, clip_sample=clip_sample,
        )
        if beta_schedule != "squaredcos_cap_v2":
            raise ValueError(f"ExtDMDDIMScheduler implements the original cosine schedule only ('squaredcos_cap_v2'), got {beta_schedule!r}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        alphas_cumprod = original_cosine_alphas_cumprod(num_train_timesteps)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        # float64 maths cast to float32, exactly as the original's registered buffers
        self.betas = (1 - alphas_cumprod / alphas_cumprod_prev).float()
        self.alphas_cumprod = alphas_cumprod.float()
        self.alphas_cumprod_prev = alphas_cumprod_prev.float()
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1 - alphas_cumprod).sqrt().float()
        self.sqrt_recip_alphas_cumprod = (1 / alphas_cumprod).sqrt().float()
        self.sqrt_recipm1_alphas_cumprod = (1 / alphas_cumprod - 1).sqrt().float()
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)
        self._grid: List[int] = []  # the time grid on the host, then its final 0
        self._step_index: Optional[int] = None

    def _move_tables(self, device: Union[str, torch.device]) -> None:
        """Keeps the schedule's tables where the samples are (as diffusers' schedulers do): looking a
        coefficient up then reads no value back to the host."""
        device = torch.device(device)
        if self.alphas_cumprod.device != device:
            for name in self._TABLES:
                setattr(self, name, getattr(self, name).to(device))

    def scale_model_input(self, sample: torch.Tensor, timestep: Optional[int] = None) -> torch.Tensor:
        return sample

    def set_timesteps(self, num_inference_steps: int, device: Union[str, torch.device] = None) -> None:
        if not 1 <= num_inference_steps <= self.config.num_train_timesteps:
            raise ValueError(
                f"`num_inference_steps` must be in [1, {self.config.num_train_timesteps}], got {num_inference_steps}"
            )
        self.num_inference_steps = num_inference_steps
        times = torch.linspace(0.0, self.config.num_train_timesteps, steps=num_inference_steps + 2)[:-1]
        times = times.int().flip(0).long()  # e.g. 909, 818, ..., 90, 0
        self._grid = times.tolist()
        self._step_index = None
        self.timesteps = times[:-1].to(device)
        if device is not None:
            self._move_tables(device)

    @property
    def step_index(self) -> Optional[int]:
        """Index in ``timesteps`` of the next step a device tensor's timestep is taken for (see ``_step_index_of``)."""
        return self._step_index

    def _step_index_of(self, timestep: Union[int, torch.Tensor]) -> int:
        """Where ``timestep`` lies in the time grid. A number or a CPU tensor is looked up by value. Reading the
        value of a tensor on an accelerator waits for the device, so that happens once after ``set_timesteps``
        (once per window); later steps follow the grid, as diffusers' multistep schedulers do."""
        on_device = isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu"
        if on_device and self._step_index is not None and self._step_index < len(self._grid) - 1:
            return self._step_index
        value = int(timestep)
        if value not in self._grid[:-1]:
            raise ValueError(f"timestep {value} is not one of this scheduler's timesteps; call `set_timesteps` first")
        return self._grid.index(value)

    def predict_original_sample(
        self, model_output: torch.Tensor, timestep: Union[int, torch.Tensor], sample: torch.Tensor
    ) -> torch.Tensor:
        """x̂0 from the denoiser's output (noise or velocity, per ``prediction_type``) at ``timestep`` (a number,
        or one per sample), thresholded (or clipped) as the original sampler does: what ``step`` uses, and what
        training decodes to log reconstruction losses."""
        if self.config.prediction_type == "v_prediction":
            signal, sigma = self._signal_and_sigma(timestep, sample)
            x0 = signal * sample - sigma * model_output
        elif self.config.prediction_type == "sample":
            x0 = model_output
        else:
            a, b = self._coefficients(timestep, sample, "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod")
            x0 = a * sample - b * model_output
        if self.config.thresholding:
            return self._threshold(x0)
        return x0.clamp(-1, 1) if self.config.clip_sample else x0

    def predict_noise(self, model_output: torch.Tensor, timestep: Union[int, torch.Tensor], sample: torch.Tensor) -> torch.Tensor:
        """ε̂: the denoiser's output itself, for ``v_prediction`` sqrt(1 − ᾱ) x_t + sqrt(ᾱ) v, for ``sample``
        (x_t − sqrt(ᾱ) x̂0) / sqrt(1 − ᾱ)."""
        if self.config.prediction_type == "epsilon":
            return model_output
        signal, sigma = self._signal_and_sigma(timestep, sample)
        if self.config.prediction_type == "sample":
            return (sample - signal * model_output) / sigma
        return sigma * sample + signal * model_output

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The ``v_prediction`` training target sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x0 (diffusers' ``get_velocity``)."""
        signal, sigma = self._signal_and_sigma(timesteps, sample)
        return signal * noise - sigma * sample

    def _signal_and_sigma(self, timestep, sample: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """sqrt(ᾱ_t) and sqrt(1 − ᾱ_t): x_t = signal x0 + sigma ε."""
        return self._coefficients(timestep, sample, "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod")

    def _coefficients(self, timestep, sample: torch.Tensor, *names: str) -> Tuple[torch.Tensor, ...]:
        """The tables ``names`` at ``timestep`` (a number, or one per sample, broadcast over ``sample``), looked
        up where ``sample`` is."""
        self._move_tables(sample.device)
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(sample.device, torch.long)
        values = tuple(getattr(self, name)[timestep] for name in names)
        if isinstance(timestep, torch.Tensor) and timestep.ndim:
            shape = (-1,) + (1,) * (sample.ndim - 1)
            values = tuple(v.view(shape) for v in values)
        return values

    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        dtype = x0.dtype
        flat = x0.float().reshape(x0.shape[0], -1)
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = s.clamp(min=1, max=self.config.sample_max_value).view(-1, *([1] * (x0.ndim - 1)))
        return (x0.float().clamp(-s, s) / s).to(dtype)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Union[int, torch.Tensor],
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        variance_noise: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> Union[ExtDMDDIMSchedulerOutput, Tuple]:
        """One DDIM step of the original sampler from ``timestep`` to the next time of the grid (``model_output``:
        the predicted noise, or velocity with ``prediction_type="v_prediction"``)."""
        if self.num_inference_steps is None:
            raise ValueError("call `set_timesteps` before `step`")
        self._move_tables(sample.device)
        index = self._step_index_of(timestep)
        t, t_next = self._grid[index], self._grid[index + 1]
        self._step_index = index + 1
        alpha, alpha_next = self.alphas_cumprod_prev[t], self.alphas_cumprod_prev[t_next]

        x0 = self.predict_original_sample(model_output, t, sample)
        model_output = self.predict_noise(model_output, t, sample)

        sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        c = ((1 - alpha_next) - sigma**2).sqrt()
        prev_sample = x0 * alpha_next.sqrt() + c * model_output
        if t_next > 0 and eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
            prev_sample = prev_sample + sigma * variance_noise
        prev_sample = prev_sample.to(sample.dtype)
        if not return_dict:
            return prev_sample, x0
        return ExtDMDDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) of the original: sqrt(alphas_cumprod[t]) x0 + sqrt(1 - alphas_cumprod[t]) noise."""
        signal, sigma = self._signal_and_sigma(timesteps, original_samples)
        dtype = original_samples.dtype
        return signal.to(dtype) * original_samples + sigma.to(dtype) * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
