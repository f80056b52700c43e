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
    _TRACKER as _CUDA_RNG_STATE_TRACKER,
)
from ds_engine.rng_tracker import (
    MODEL_PARALLEL_RNG as _MODEL_PARALLEL_RNG_TRACKER_NAME,
)
from ds_engine.rng_tracker import (
    CudaRNGStatesTracker,
    get_cuda_rng_tracker,
    model_parallel_cuda_manual_seed,
    model_parallel_reconfigure_tp_seed,
)

__all__ = [
    "_CUDA_RNG_STATE_TRACKER",
    "_MODEL_PARALLEL_RNG_TRACKER_NAME",
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
