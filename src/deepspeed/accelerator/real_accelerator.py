"""`deepspeed.accelerator.real_accelerator`: DeepSpeed's module path for the same functions."""

from ds_accel import get_accelerator, is_current_accelerator_supported, set_accelerator
from ds_accel.registry import available_names

SUPPORTED_ACCELERATOR_LIST = available_names()

__all__ = [
    "SUPPORTED_ACCELERATOR_LIST",
    "get_accelerator",
    "is_current_accelerator_supported",
    "set_accelerator",
]
