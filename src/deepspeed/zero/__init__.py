"""`deepspeed.zero`: ZeRO-3 model construction and gathering (aliases of `ds_zero.stage3`)."""

from ds_zero.stage3 import (
    GatheredParameters,
    Init,
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
