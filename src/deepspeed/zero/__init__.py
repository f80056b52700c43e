"""`deepspeed.zero`: ZeRO-3 model construction and gathering (aliases of `ds_zero.stage3`)."""

from ds_engine.zero_init import Init  # ds_zero's Init with the engine's config validation
from ds_zero.stage3 import (
    GatheredParameters,
    ZeroParamStatus,
    ZeroParamType,
    register_external_parameter,
    unregister_external_parameter,
)

__all__ = [
    "GatheredParameters",
    "Init",
    "ZeroParamStatus",
    "ZeroParamType",
    "register_external_parameter",
    "unregister_external_parameter",
]
