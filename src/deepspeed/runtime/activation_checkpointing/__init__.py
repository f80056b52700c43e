"""`deepspeed.runtime.activation_checkpointing`: DeepSpeed's package path for activation checkpointing."""

from deepspeed.runtime.activation_checkpointing import checkpointing

__all__ = ["checkpointing"]
