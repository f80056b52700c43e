"""Pipeline parallelism: ``PipelineModule`` and its layer specs, DeepSpeed's topologies, the 1F1B order.

The engine that runs it (``train_batch``) is ``ds_engine.pipe_engine.PipelineEngine``.
"""

from ds_parallel.pipe.module import LayerSpec, PipelineError, PipelineModule, TiedLayerSpec
from ds_parallel.pipe.topology import (
    PipeDataParallelTopology,
    PipelineParallelGrid,
    PipeModelDataParallelTopology,
    ProcessTopology,
)

__all__ = [
    "LayerSpec",
    "PipeDataParallelTopology",
    "PipeModelDataParallelTopology",
    "PipelineError",
    "PipelineModule",
    "PipelineParallelGrid",
    "ProcessTopology",
    "TiedLayerSpec",
]
