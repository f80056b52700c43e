"""`deepspeed.runtime.pipe` (ds_parallel.pipe)."""

from ds_parallel.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from ds_parallel.pipe.topology import PipeDataParallelTopology, ProcessTopology

__all__ = ["LayerSpec", "PipeDataParallelTopology", "PipelineModule", "ProcessTopology", "TiedLayerSpec"]
