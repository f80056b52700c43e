"""`deepspeed.runtime.engine` (ds_engine.engine)."""

from collections.abc import Callable
from typing import Any

from ds_engine.autocast import autocast_if_enabled
from ds_engine.engine import DeepSpeedEngine

DeepSpeedOptimizerCallable = Callable[[Any], Any]
DeepSpeedSchedulerCallable = Callable[[Any], Any]

__all__ = [
    "DeepSpeedEngine",
    "autocast_if_enabled",
    "DeepSpeedOptimizerCallable",
    "DeepSpeedSchedulerCallable",
]
