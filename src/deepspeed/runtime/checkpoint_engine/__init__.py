"""``deepspeed.runtime.checkpoint_engine``: the checkpoint-engine interface and the torch engine
(atomic saves, safe loads: ds_engine.checkpoint.checkpoint_engine)."""

from deepspeed.runtime.checkpoint_engine import checkpoint_engine, torch_checkpoint_engine
from ds_engine.checkpoint.checkpoint_engine import (
    CheckpointCommitInfo,
    CheckpointEngine,
    TorchCheckpointEngine,
)

__all__ = [
    "CheckpointCommitInfo",
    "CheckpointEngine",
    "TorchCheckpointEngine",
    "checkpoint_engine",
    "torch_checkpoint_engine",
]
