"""`deepspeed.module_inject`: AutoTP's layers (ds_parallel.tensor)."""

from ds_parallel.tensor.autotp import LayerSpec as TPLayerSpec
from ds_parallel.tensor.layers import GatherReplacedLayerParams, LinearAllreduce, LinearLayer

__all__ = ["GatherReplacedLayerParams", "LinearAllreduce", "LinearLayer", "TPLayerSpec"]
