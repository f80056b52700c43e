"""Checkpoints in DeepSpeed's layout: atomic writes, safe loads, rank rendezvous, a manifest per tag."""

from ds_engine.checkpoint.engine_io import load, save
from ds_engine.checkpoint.files import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    UnsafeCheckpointValue,
    atomic_torch_save,
    atomic_write_text,
    safe_load,
)
from ds_engine.checkpoint.layout import default_tag, latest_path, model_states_path, zero_optim_states_path
from ds_engine.checkpoint.manifest import IncompleteCheckpointError
from ds_engine.checkpoint.rendezvous import CheckpointRendezvousError, make_checkpoint_group

__all__ = [
    "CheckpointRendezvousError",
    "CorruptCheckpointError",
    "IncompleteCheckpointError",
    "UnsafeCheckpointError",
    "UnsafeCheckpointValue",
    "atomic_torch_save",
    "atomic_write_text",
    "default_tag",
    "latest_path",
    "load",
    "make_checkpoint_group",
    "model_states_path",
    "safe_load",
    "save",
    "zero_optim_states_path",
]
