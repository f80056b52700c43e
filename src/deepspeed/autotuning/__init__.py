"""``deepspeed.autotuning``: the autotuner behind ``deepspeed --autotuning tune|run``, as thin aliases.

The search runs in the (torch-free) launcher, :mod:`ds_launch.autotuning`; the engine's measuring side is
:mod:`ds_engine.autotuning_probe`.
"""

from ds_launch.autotuning import Autotuner, TuningSettings, parse_settings, run_autotuning

__all__ = ["Autotuner", "TuningSettings", "parse_settings", "run_autotuning"]
