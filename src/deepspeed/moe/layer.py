"""`deepspeed.moe.layer`: the MoE layer (ds_parallel.moe.layer)."""

from ds_parallel.moe.layer import MoE

__all__ = ["MoE"]
