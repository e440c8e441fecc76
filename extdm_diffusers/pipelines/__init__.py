from .pipeline_extdm import DEFAULT_ROLLOUT_REFERENCE, ROLLOUT_REFERENCES, ExtDMPipeline, ExtDMPipelineOutput

__all__ = ["DEFAULT_ROLLOUT_REFERENCE", "ROLLOUT_REFERENCES", "ExtDMPipeline", "ExtDMPipelineOutput"]
