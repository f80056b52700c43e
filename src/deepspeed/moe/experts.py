"""`deepspeed.moe.experts`: the experts container (ds_parallel.moe.layer)."""

from ds_parallel.moe.layer import Experts

__all__ = ["Experts"]
