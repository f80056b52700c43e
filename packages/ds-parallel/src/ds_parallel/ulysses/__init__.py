"""DeepSpeed-Ulysses sequence parallelism and ALST's tiled compute."""

from ds_parallel.ulysses.all_to_all import seq_all_to_all
from ds_parallel.ulysses.dataloader import UlyssesSPDataLoaderAdapter, shift_and_shard
from ds_parallel.ulysses.distributed_attention import DistributedAttention
from ds_parallel.ulysses.hf_attention import SequenceParallelConfigError, UlyssesSPAttentionHF, check_heads
from ds_parallel.ulysses.loss import sequence_parallel_loss
from ds_parallel.ulysses.tiled import (
    SequenceTiledCompute,
    TiledFusedLogitsLoss,
    TiledMLP,
    sequence_tiled_compute,
)

__all__ = [
    "DistributedAttention",
    "SequenceParallelConfigError",
    "SequenceTiledCompute",
    "TiledFusedLogitsLoss",
    "TiledMLP",
    "UlyssesSPAttentionHF",
    "UlyssesSPDataLoaderAdapter",
    "check_heads",
    "seq_all_to_all",
    "sequence_parallel_loss",
    "sequence_tiled_compute",
    "shift_and_shard",
]
