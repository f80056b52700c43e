"""`deepspeed.accelerator.real_accelerator`: DeepSpeed's module path for the same functions."""

from ds_accel import get_accelerator, set_accelerator

__all__ = ["get_accelerator", "set_accelerator"]
