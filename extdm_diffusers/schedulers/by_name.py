"""Schedulers by name: the one table of what ``extdm-predict --scheduler`` (and any other command) can sample with.

    pipe.scheduler = make_scheduler("dpm", pipe.scheduler.config)

Every stock scheduler is made with ``from_config`` from the pipeline's scheduler config, so it keeps the ExtDM
schedule (``squaredcos_cap_v2``, 1000 steps, the prediction type, dynamic thresholding where it has it).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from .scheduling_extdm_ddim import ExtDMDDIMScheduler

# name -> (class, from_config overrides). The multistep solvers keep their defaults for few steps (second order,
# lower-order final steps below 15 steps); dpm_sde is DPM-Solver++'s stochastic variant (no torchsde needed).
_SCHEDULERS: Dict[str, Tuple[type, Dict[str, Any]]] = {
    "ddim_original": (ExtDMDDIMScheduler, {}),  # the original sampler, step for step
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "dpm": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "unipc": (UniPCMultistepScheduler, {"solver_order": 2}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
}

#: The names ``make_scheduler`` takes.
SCHEDULER_NAMES = tuple(_SCHEDULERS)


def make_scheduler(name: str, config: Mapping[str, Any]):
    """The scheduler ``name`` (one of ``SCHEDULER_NAMES``) built from a scheduler ``config`` (``pipe.scheduler.config``)."""
    if name not in _SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
    cls, overrides = _SCHEDULERS[name]
    return cls.from_config(config, **overrides)
