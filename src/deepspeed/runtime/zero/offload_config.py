"""``deepspeed.runtime.zero.offload_config``: the offload sections' models (ds_engine.config.zero) and
DeepSpeed's enums of their values (ds_engine.offload_enums)."""

from ds_engine.config.zero import OffloadOptimizerConfig as DeepSpeedZeroOffloadOptimizerConfig
from ds_engine.config.zero import OffloadParamConfig as DeepSpeedZeroOffloadParamConfig
from ds_engine.offload_enums import OffloadDeviceEnum, OffloadStateTypeEnum

__all__ = [
    "DeepSpeedZeroOffloadOptimizerConfig",
    "DeepSpeedZeroOffloadParamConfig",
    "OffloadDeviceEnum",
    "OffloadStateTypeEnum",
]
