"""``deepspeed.profiling.flops_profiler``: DeepSpeed's FLOPs profiler names (ds_engine.profiling)."""

from deepspeed.profiling.flops_profiler.profiler import *  # noqa: F401,F403
from deepspeed.profiling.flops_profiler.profiler import __all__  # noqa: F401
