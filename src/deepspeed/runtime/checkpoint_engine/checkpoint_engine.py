"""``deepspeed.runtime.checkpoint_engine.checkpoint_engine``: the interface clients subclass."""

from ds_engine.checkpoint.checkpoint_engine import CheckpointCommitInfo, CheckpointEngine

__all__ = ["CheckpointCommitInfo", "CheckpointEngine"]
