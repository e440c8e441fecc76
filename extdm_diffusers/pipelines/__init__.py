from .pipeline_extdm import ROLLOUT_REFERENCES, ExtDMPipeline, ExtDMPipelineOutput

__all__ = ["ROLLOUT_REFERENCES", "ExtDMPipeline", "ExtDMPipelineOutput"]
