from .pipeline_extdm import ExtDMPipeline, ExtDMPipelineOutput

__all__ = ["ExtDMPipeline", "ExtDMPipelineOutput"]
