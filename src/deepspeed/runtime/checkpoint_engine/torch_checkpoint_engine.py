"""``deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine``: ``TorchCheckpointEngine``."""

from ds_engine.checkpoint.checkpoint_engine import TorchCheckpointEngine

__all__ = ["TorchCheckpointEngine"]
