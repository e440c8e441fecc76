"""Schedulers by name: the one table of what ``--scheduler`` (``extdm-predict``, ``training_scripts/evaluate.py``,
``benchmarks/bench_samplers.py``) can sample with.

    pipe.scheduler = make_scheduler("dpm", pipe.scheduler.config)

Every stock scheduler is made with ``from_config`` from the pipeline's scheduler config, so it keeps the ExtDM
schedule's settings (1000 steps, the prediction type, dynamic thresholding where it has it), plus:

- ``trained_betas``: the original cosine schedule's own betas. diffusers' ``squaredcos_cap_v2`` clips the last
  beta at 0.999, the original at 0.9999: the same schedule except at t = 999, where ᾱ differs tenfold; the
  solvers below start there, and the denoiser was trained with the original's value.
- ``timestep_spacing="trailing"``: the first call at t = 999 (pure noise), whatever the number of steps. DDIM's
  and DDPM's default ``leading`` starts 1000/steps below it (t = 500 at 2 steps) and ends on a call at t = 0.
- second-order multistep solvers (DPM-Solver++, UniPC), first order on the last steps below 15 steps (diffusers'
  ``lower_order_final``): the settings their authors give for ~10 steps.
- no Karras sigmas: they suit σ_max ≈ 80; the cosine schedule's σ_max is ≈ 64000, so Karras' ρ = 7 spacing puts
  most of a few-step budget at σ ≫ 1, where every input is noise.

``dpm_sde`` is DPM-Solver++'s stochastic multistep variant (``algorithm_type="sde-dpmsolver++"``), not diffusers'
``DPMSolverSDEScheduler``: that one needs ``torchsde`` and makes two calls per step, and a name must mean the same
sampler on every machine.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Dict, Mapping, Tuple

import torch

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from .scheduling_extdm_ddim import ExtDMDDIMScheduler

_TRAILING = {"timestep_spacing": "trailing"}
_MULTISTEP = {**_TRAILING, "solver_order": 2, "lower_order_final": True}

# name -> (class, from_config overrides): the solver settings, recorded in metrics.json as they are here
_SCHEDULERS: Dict[str, Tuple[type, Dict[str, Any]]] = {
    "ddim_original": (ExtDMDDIMScheduler, {}),  # the original sampler, step for step
    "ddim": (DDIMScheduler, _TRAILING),
    "ddpm": (DDPMScheduler, _TRAILING),
    "dpm": (DPMSolverMultistepScheduler, {**_MULTISTEP, "algorithm_type": "dpmsolver++"}),
    "dpm_sde": (DPMSolverMultistepScheduler, {**_MULTISTEP, "algorithm_type": "sde-dpmsolver++"}),
    "unipc": (UniPCMultistepScheduler, _MULTISTEP),
    "euler": (EulerDiscreteScheduler, _TRAILING),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, _TRAILING),
}

#: The names ``make_scheduler`` takes.
SCHEDULER_NAMES = tuple(_SCHEDULERS)


def _entry(name: str) -> Tuple[type, Dict[str, Any]]:
    if name not in _SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
    return _SCHEDULERS[name]


def make_scheduler(name: str, config: Mapping[str, Any]):
    """The scheduler ``name`` (one of ``SCHEDULER_NAMES``) built from a scheduler ``config`` (``pipe.scheduler.config``)."""
    cls, overrides = _entry(name)
    overrides = dict(overrides)
    if cls is not ExtDMDDIMScheduler and config.get("beta_schedule") == "squaredcos_cap_v2" and not config.get("trained_betas"):
        schedule = ExtDMDDIMScheduler(num_train_timesteps=config.get("num_train_timesteps", 1000))
        overrides["trained_betas"] = schedule.betas.tolist()
    scheduler = cls.from_config(config, **overrides)
    if isinstance(scheduler, DDIMScheduler):
        # DDIM's step takes sqrt(1 - abar_prev - sigma^2); from t = 999 (abar 2e-10) at eta 1 the exact value is
        # ~2e-9, below float32's rounding, and float32 alphas made it -6e-8: NaN. float64 coefficients keep it
        # positive; the sample stays in its own dtype (a 0-dim tensor does not promote it).
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)
        scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.to(torch.float64)
    return scheduler


def scheduler_takes_eta(name: str) -> bool:
    """Whether the scheduler's ``step`` takes DDIM's ``eta`` (the pipeline passes it only to those)."""
    return "eta" in inspect.signature(_entry(name)[0].step).parameters


def scheduler_settings(name: str) -> Dict[str, Any]:
    """What ``metrics.json`` records of scheduler ``name``: its class and the solver settings it is made with."""
    cls, overrides = _entry(name)
    schedule = "the original's (ExtDMDDIMScheduler)" if cls is ExtDMDDIMScheduler else "the original's cosine betas (trained_betas)"
    return {"class": cls.__name__, "schedule": schedule, **overrides}


def denoiser_calls_per_video(name: str, config: Mapping[str, Any], num_inference_steps: int, num_frames: int,
                             window_frames: int) -> int:
    """U-Net calls for one sample of one video: the scheduler's timesteps per window (``len(timesteps)``, which
    is what the pipeline loops over) times the windows of ``num_frames`` predicted ``window_frames`` at a time."""
    scheduler = make_scheduler(name, config)
    scheduler.set_timesteps(num_inference_steps)
    return len(scheduler.timesteps) * math.ceil(num_frames / window_frames)
