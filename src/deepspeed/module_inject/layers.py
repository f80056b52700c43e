"""`deepspeed.module_inject.layers` (ds_parallel.tensor.layers)."""

from ds_parallel.tensor.layers import (
    DS_IS_REPLACED_MODULE,
    DS_TENSOR_MODEL_PARALLEL,
    GatherReplacedLayerParams,
    LinearAllreduce,
    LinearLayer,
    LmHeadLinearAllreduce,
)
from ds_parallel.tensor.layers import (
    TensorParallelLayer as TensorParallel_Layer,
)

__all__ = [
    "DS_IS_REPLACED_MODULE",
    "DS_TENSOR_MODEL_PARALLEL",
    "GatherReplacedLayerParams",
    "LinearAllreduce",
    "LinearLayer",
    "LmHeadLinearAllreduce",
    "TensorParallel_Layer",
]
