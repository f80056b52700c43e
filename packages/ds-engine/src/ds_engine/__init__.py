"""ds_engine: DeepSpeed's config, ``initialize``, the training engine, LR schedules and checkpoints."""

from ds_engine._version import __version__
from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError
from ds_engine.engine import DeepSpeedEngine
from ds_engine.initialize import add_config_arguments, initialize

__all__ = [
    "DeepSpeedConfig",
    "DeepSpeedConfigError",
    "DeepSpeedEngine",
    "__version__",
    "add_config_arguments",
    "initialize",
]
