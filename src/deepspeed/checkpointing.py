"""`deepspeed.checkpointing`: activation checkpointing (ds_engine.activation_checkpointing)."""

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

__all__ = [
    "CheckpointingPolicy",
    "checkpoint",
    "configure",
    "current_policy",
    "is_configured",
    "non_reentrant_checkpoint",
    "partition_activations_in_checkpoint",
    "reset",
    "set_num_layers",
]
