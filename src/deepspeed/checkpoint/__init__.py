"""`deepspeed.checkpoint`: checkpoint helpers clients import from DeepSpeed's path."""

from deepspeed.checkpoint import constants
from deepspeed.checkpoint.utils import clone_tensors_for_torch_save

__all__ = ["clone_tensors_for_torch_save", "constants"]
