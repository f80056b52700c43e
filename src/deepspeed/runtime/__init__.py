"""`deepspeed.runtime`: the engine's modules at DeepSpeed's paths (aliases of ds_engine and ds_zero)."""
