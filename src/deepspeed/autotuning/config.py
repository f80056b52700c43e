"""``deepspeed.autotuning.config``: the ``autotuning`` section as the engine validates it (alias)."""

from ds_engine.config.features import AutotuningConfig

DeepSpeedAutotuningConfig = AutotuningConfig

__all__ = ["AutotuningConfig", "DeepSpeedAutotuningConfig"]
