"""`deepspeed.runtime.pipe.engine` (ds_engine.pipe_engine)."""

from ds_engine.pipe_engine import PipelineEngine

__all__ = ["PipelineEngine"]
