"""``deepspeed.profiling``: the FLOPs profiler (ds_engine.profiling)."""
