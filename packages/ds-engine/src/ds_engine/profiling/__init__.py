"""DeepSpeed's FLOPs profiler (``deepspeed.profiling.flops_profiler``): per-module parameters, MACs/FLOPs
and forward latency, counted with torch's dispatch machinery (:mod:`ds_engine.profiling.counting`)."""

from ds_engine.profiling.formatting import (
    DEFAULT_PRECISION,
    bytes_to_string,
    duration_to_string,
    flops_to_string,
    macs_to_string,
    number_to_string,
    params_to_string,
)
from ds_engine.profiling.profiler import (
    FlopsProfiler,
    get_model_profile,
    get_module_duration,
    get_module_flops,
    get_module_macs,
)

__all__ = [
    "DEFAULT_PRECISION",
    "FlopsProfiler",
    "bytes_to_string",
    "duration_to_string",
    "flops_to_string",
    "get_model_profile",
    "get_module_duration",
    "get_module_flops",
    "get_module_macs",
    "macs_to_string",
    "number_to_string",
    "params_to_string",
]
