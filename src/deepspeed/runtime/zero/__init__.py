"""`deepspeed.runtime.zero`: DeepSpeed's path for the ZeRO-3 helpers (aliases of `ds_zero.stage3`)."""

from deepspeed.runtime.zero import partition_parameters
from deepspeed.runtime.zero.partition_parameters import (
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
    "partition_parameters",
    "register_external_parameter",
    "unregister_external_parameter",
]
