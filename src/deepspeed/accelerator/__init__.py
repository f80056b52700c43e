"""`deepspeed.accelerator`: accelerator selection (ds_accel)."""

from ds_accel import Accelerator as DeepSpeedAccelerator
from ds_accel import get_accelerator, is_current_accelerator_supported, set_accelerator

__all__ = ["DeepSpeedAccelerator", "get_accelerator", "is_current_accelerator_supported", "set_accelerator"]
