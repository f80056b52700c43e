"""`deepspeed.moe.sharded_moe`: gate, gating functions and the dispatching layer (ds_parallel.moe)."""

from ds_parallel.moe.gating import gumbel_rsample, multiplicative_jitter, top1gating, top2gating, topkgating
from ds_parallel.moe.layer import MOELayer, TopKGate, _AllToAll

__all__ = [
    "MOELayer",
    "TopKGate",
    "_AllToAll",
    "gumbel_rsample",
    "multiplicative_jitter",
    "top1gating",
    "top2gating",
    "topkgating",
]
