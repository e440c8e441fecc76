from .by_name import SCHEDULER_NAMES, make_scheduler
from .scheduling_extdm_ddim import ExtDMDDIMScheduler, ExtDMDDIMSchedulerOutput

__all__ = ["ExtDMDDIMScheduler", "ExtDMDDIMSchedulerOutput", "SCHEDULER_NAMES", "make_scheduler"]
