"""`deepspeed.sequence.layer` (ds_parallel.ulysses)."""

from ds_parallel.ulysses.all_to_all import seq_all_to_all as single_all_to_all
from ds_parallel.ulysses.distributed_attention import DistributedAttention

__all__ = ["DistributedAttention", "single_all_to_all"]
