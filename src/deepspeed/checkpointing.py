"""`deepspeed.checkpointing`: activation checkpointing (ds_engine.activation_checkpointing) and the
model-parallel RNG tracker (ds_engine.rng_tracker)."""

from ds_engine.activation_checkpointing import (
    CheckpointingPolicy,
    checkpoint,
    configure,
    current_policy,
    is_configured,
    non_reentrant_checkpoint,
    partition_activations_in_checkpoint,
    reset,
    set_num_layers,
)
from ds_engine.rng_tracker import (
    CudaRNGStatesTracker,
    get_cuda_rng_tracker,
    model_parallel_cuda_manual_seed,
    model_parallel_reconfigure_tp_seed,
)

__all__ = [
    "CheckpointingPolicy",
    "CudaRNGStatesTracker",
    "checkpoint",
    "configure",
    "current_policy",
    "get_cuda_rng_tracker",
    "is_configured",
    "model_parallel_cuda_manual_seed",
    "model_parallel_reconfigure_tp_seed",
    "non_reentrant_checkpoint",
    "partition_activations_in_checkpoint",
    "reset",
    "set_num_layers",
]
