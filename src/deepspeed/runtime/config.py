"""`deepspeed.runtime.config` (ds_engine.config)."""

from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError, DeepSpeedConfigModel

__all__ = ["DeepSpeedConfig", "DeepSpeedConfigError", "DeepSpeedConfigModel"]
