"""ds_accel: which accelerator this process runs on, and one device API for all of them.

Importing this package does not import torch (the launcher relies on that): the accelerator classes
load on first use.
"""

from ds_accel._version import __version__
from ds_accel.accelerators.base import Accelerator
from ds_accel.registry import (
    AcceleratorError,
    available_names,
    get_accelerator,
    is_current_accelerator_supported,
    register,
    reset_accelerator,
    set_accelerator,
)

__all__ = [
    "Accelerator",
    "AcceleratorError",
    "__version__",
    "available_names",
    "get_accelerator",
    "is_current_accelerator_supported",
    "register",
    "reset_accelerator",
    "set_accelerator",
]
