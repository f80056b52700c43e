"""`deepspeed.runtime.pipe.module` (ds_parallel.pipe.module)."""

from ds_parallel.pipe.module import LayerSpec, PipelineError, PipelineModule, TiedLayerSpec

__all__ = ["LayerSpec", "PipelineError", "PipelineModule", "TiedLayerSpec"]
