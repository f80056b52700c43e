"""AutoTP tensor parallelism: split HF transformer blocks' linear layers over the mesh's tensor axis.

:func:`tp_model_init` (``deepspeed.tp_model_init``), :func:`partition_model`, the layers
(``deepspeed.module_inject.layers`` names) and :func:`full_state_dict` for saving unsplit weights.
"""

from ds_parallel.tensor.autotp import LayerSpec, PartitionPlan, partition_model
from ds_parallel.tensor.consolidate import full_state_dict, is_tensor_parallel
from ds_parallel.tensor.init import TP_SIZE_ATTR, apply_autotp, tensor_mesh, tensor_section, tp_model_init
from ds_parallel.tensor.layers import (
    GatherReplacedLayerParams,
    LinearAllreduce,
    LinearLayer,
    LmHeadLinearAllreduce,
    PartitionError,
    TensorParallelLayer,
)

__all__ = [
    "GatherReplacedLayerParams",
    "LayerSpec",
    "LinearAllreduce",
    "LinearLayer",
    "LmHeadLinearAllreduce",
    "PartitionError",
    "PartitionPlan",
    "TP_SIZE_ATTR",
    "TensorParallelLayer",
    "apply_autotp",
    "full_state_dict",
    "is_tensor_parallel",
    "partition_model",
    "tensor_mesh",
    "tensor_section",
    "tp_model_init",
]
