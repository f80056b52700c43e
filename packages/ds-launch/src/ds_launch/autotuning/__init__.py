"""``deepspeed --autotuning tune|run``: find the fastest DeepSpeed config for the user's job by running it.

The launcher process stays torch-free: it only reads the config, starts experiments through this
launcher (each one a real run of the user's script, measured by the engine, Note [autotuning protocol]),
and reads the files they leave (Note [experiment files]). The search is Note [autotuning search].
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from ds_launch.autotuning.autotuner import Autotuner
from ds_launch.autotuning.command import LaunchCommand
from ds_launch.autotuning.report import optimal_config, write_optimal
from ds_launch.autotuning.runner import TuningInterrupted
from ds_launch.autotuning.settings import (
    TuningSettings,
    find_config_argument,
    load_user_config,
    parse_settings,
)
from ds_launch.errors import LaunchError
from ds_launch.options import LaunchOptions

logger = logging.getLogger("ds_launch")

__all__ = ["Autotuner", "TuningSettings", "parse_settings", "run_autotuning"]


def _check_options(options: LaunchOptions) -> None:
    if options.elastic_training:
        raise LaunchError("--autotuning cannot be combined with --elastic_training")
    if options.no_ssh:
        raise LaunchError(
            "--autotuning needs one launcher for the whole job; it cannot be combined with --no_ssh"
        )


def _check_config(user_config: dict[str, Any]) -> None:
    elastic = user_config.get("elasticity")
    if isinstance(elastic, dict) and elastic.get("enabled") is True:
        raise LaunchError(
            "--autotuning tunes the batch sizes, but 'elasticity' is enabled and chooses them; "
            "disable one of the two"
        )
    section = user_config.get("autotuning")
    if not (isinstance(section, dict) and section.get("enabled") is True):
        logger.warning("'autotuning.enabled' is not true in the config; the experiments enable it themselves")


def run_autotuning(options: LaunchOptions, *, world_size: int, env: dict[str, str]) -> int:
    """Tune (and with ``--autotuning run`` then train with the best config); returns the exit code."""
    from ds_launch.driver import launch  # the driver imports this package lazily too

    _check_options(options)
    config_arg = find_config_argument(options.user_args)
    user_config = load_user_config(config_arg.path)
    _check_config(user_config)
    settings = parse_settings(user_config.get("autotuning"))
    command = LaunchCommand.from_options(options, config_arg, settings.arg_mappings or {})
    tuner = Autotuner(
        user_config=user_config, settings=settings, command=command, world_size=world_size, env=env
    )
    try:
        best = tuner.tune()
    except TuningInterrupted as stop:
        tuner.progress.say(f"interrupted (signal {stop.signum}); results so far are in {tuner.results_dir}")
        return 128 + stop.signum
    print(tuner.summary(), flush=True)
    if best is None:
        tuner.progress.say(f"no experiment produced a measurement; see the logs under {tuner.results_dir}")
        return 1
    optimal_path = tuner.results_dir / "ds_config_optimal.json"
    best_args = command.script_args(str(optimal_path), optimal_config(best, tuner.results_dir))
    final = replace(options, autotuning="", save_pid=False, user_args=tuple(best_args))
    command_text = LaunchCommand.display(
        [*command.flags, "--master_port", str(options.master_port), options.user_script, *best_args]
    )
    write_optimal(best, tuner.results_dir, command_text)
    tuner.progress.say(
        f"best: {best.result.name} ({settings.metric} {best.value:.4g}); wrote {optimal_path} and "
        f"{tuner.results_dir / 'cmd_optimal.txt'}"
    )
    if options.autotuning == "run":
        tuner.progress.say(f"training with the best config: {command_text}")
        return launch(final)
    return 0
