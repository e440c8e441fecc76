from .by_name import SCHEDULER_NAMES, denoiser_calls_per_video, make_scheduler, scheduler_settings, scheduler_takes_eta
from .sampler_presets import SAMPLER_PRESETS, Sampler, SamplerPreset, resolve_sampler
from .scheduling_extdm_ddim import ExtDMDDIMScheduler, ExtDMDDIMSchedulerOutput

__all__ = ["ExtDMDDIMScheduler", "ExtDMDDIMSchedulerOutput", "SCHEDULER_NAMES", "make_scheduler", "scheduler_settings",
           "scheduler_takes_eta", "denoiser_calls_per_video", "SAMPLER_PRESETS", "SamplerPreset", "Sampler",
           "resolve_sampler"]
