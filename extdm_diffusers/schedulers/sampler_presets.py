"""Sampler presets (``--sampler_preset``) and the one rule that turns ``--scheduler``, ``--num_inference_steps``,
``--eta`` and ``--sampler_preset`` into the sampler a run uses (evaluation, ``extdm-predict``, the sampler study).

A preset sets the scheduler, the steps per window and eta together; giving one of those flags as well is an
error naming both, so that a recorded preset always means the same sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from .by_name import SCHEDULER_NAMES, scheduler_settings, scheduler_takes_eta

PAPER_SCHEDULER = "ddim_original"


@dataclass(frozen=True)
class SamplerPreset:
    """``num_inference_steps`` / ``eta`` None: the benchmark protocol's (10 and 1.0 for all five benchmarks)."""

    scheduler: str
    num_inference_steps: Optional[int] = None
    eta: Optional[float] = None
    description: str = ""


SAMPLER_PRESETS: Dict[str, SamplerPreset] = {
    "protocol": SamplerPreset(PAPER_SCHEDULER, description="the paper's sampler: ExtDMDDIMScheduler with the "
                              "benchmark protocol's steps and eta (10 steps, eta 1.0)"),
    # chosen by data (docs/performance.md, issue 20): the fewest calls that held the protocol's PSNR, SSIM and
    # diversity on 64 videos of the two-digit long quick start; no setting of <= 5 steps per window did. It does not
    # hold on the one-digit long quick start (ddim 8 does there): not changed on one pipeline's evidence
    "fast": SamplerPreset("dpm_sde", 8, description="SDE-DPM-Solver++ (2nd order), 8 steps per window: 16 denoiser "
                          "calls for two windows instead of 20; on the two-digit long quick start (64 videos, 8 "
                          "samples) within the paired 95% interval of the protocol's PSNR and SSIM, diversity within "
                          "2%; on the one-digit one 0.27 dB below it (docs/performance.md)"),
}


@dataclass(frozen=True)
class Sampler:
    """The sampler a run uses. ``eta`` is None for schedulers whose ``step`` takes none."""

    scheduler: str
    num_inference_steps: int
    eta: Optional[float]
    preset: Optional[str] = None

    def settings(self) -> Dict[str, Any]:
        """The solver settings as ``metrics.json`` records them (JSON-able); ``eta`` None: the scheduler takes none."""
        return {**scheduler_settings(self.scheduler), "eta": self.eta}

    def is_paper(self, protocol_steps: int, protocol_eta: float) -> bool:
        """The paper's sampler: the original DDIM with the protocol's steps and eta."""
        return (self.scheduler, self.num_inference_steps, self.eta) == (PAPER_SCHEDULER, protocol_steps, float(protocol_eta))

    def describe(self) -> str:
        eta = "" if self.eta is None else f", eta {self.eta:g}"
        preset = f" (--sampler_preset {self.preset})" if self.preset else ""
        return f"{self.scheduler}, {self.num_inference_steps} steps per window{eta}{preset}"


def resolve_sampler(scheduler: Optional[str] = None, num_inference_steps: Optional[int] = None,
                    eta: Optional[float] = None, preset: Optional[str] = None, *, protocol_steps: int = 10,
                    protocol_eta: float = 1.0) -> Sampler:
    """The flags (None: not given) -> a :class:`Sampler`; defaults are the paper's sampler with the protocol's
    steps and eta. Bad or conflicting flags raise ``ValueError`` naming them."""
    if preset is not None:
        if preset not in SAMPLER_PRESETS:
            raise ValueError(f"--sampler_preset: unknown preset {preset!r}; choose one of {', '.join(SAMPLER_PRESETS)}")
        given = [f"--{name}" for name, value in (("scheduler", scheduler), ("num_inference_steps", num_inference_steps),
                                                   ("eta", eta)) if value is not None]
        if given:
            raise ValueError(f"--sampler_preset {preset} sets the scheduler, steps and eta; it cannot be combined "
                             f"with {', '.join(given)} (pass the preset or the flags)")
        chosen = SAMPLER_PRESETS[preset]
        scheduler, num_inference_steps, eta = chosen.scheduler, chosen.num_inference_steps, chosen.eta
    scheduler = PAPER_SCHEDULER if scheduler is None else scheduler
    if scheduler not in SCHEDULER_NAMES:
        raise ValueError(f"--scheduler: unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
    steps = protocol_steps if num_inference_steps is None else num_inference_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--num_inference_steps must be an integer >= 1, got {steps!r}")
    if scheduler_takes_eta(scheduler):
        eta = float(protocol_eta if eta is None else eta)
        if not eta >= 0:
            raise ValueError(f"--eta must be >= 0 (0: deterministic DDIM, 1: the original's sampling), got {eta}")
    elif eta is not None:
        raise ValueError(f"--eta: scheduler {scheduler} takes no eta (only "
                         f"{', '.join(n for n in SCHEDULER_NAMES if scheduler_takes_eta(n))} do)")
    return Sampler(scheduler, steps, eta, preset)
