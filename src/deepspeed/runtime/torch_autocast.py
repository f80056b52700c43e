"""`deepspeed.runtime.torch_autocast` (ds_engine.autocast)."""

from ds_engine.autocast import (
    LOWER_PRECISION_SAFE_MODULES,
    PARAM_COMM_DTYPE_ATTR_NAME,
    autocast_if_enabled,
    get_all_comm_dtypes,
    get_autocast_dtype,
    get_comm_dtype,
    has_comm_dtype,
    init_autocast_params,
    is_autocast_initialized,
    sort_dtypes,
)
from ds_engine.autocast import default_lower_precision_modules as get_default_autocast_lower_precision_modules

__all__ = [
    "LOWER_PRECISION_SAFE_MODULES",
    "PARAM_COMM_DTYPE_ATTR_NAME",
    "autocast_if_enabled",
    "get_all_comm_dtypes",
    "get_autocast_dtype",
    "get_comm_dtype",
    "get_default_autocast_lower_precision_modules",
    "has_comm_dtype",
    "init_autocast_params",
    "is_autocast_initialized",
    "sort_dtypes",
]
