from .scheduling_extdm_ddim import ExtDMDDIMScheduler, ExtDMDDIMSchedulerOutput

__all__ = ["ExtDMDDIMScheduler", "ExtDMDDIMSchedulerOutput"]
