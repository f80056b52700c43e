"""The user's DeepSpeed config as the autotuner reads it: where it is among the script's arguments, and
its ``autotuning`` section validated without the engine (the launcher stays torch-free).

The engine validates the same section with its pydantic model (``ds_engine.config.features.AutotuningConfig``);
a cross-package test keeps the two key sets equal.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ds_launch.errors import LaunchError

CONFIG_FLAGS = ("--deepspeed_config", "--deepscale_config")
HF_CONFIG_FLAG = "--deepspeed"  # Hugging Face passes the config path as --deepspeed ds_config.json
METRICS = ("throughput", "latency", "flops")
TUNERS = ("gridsearch", "random", "model_based")


@dataclass(frozen=True)
class ConfigArgument:
    """Where the config path sits in the user's arguments: ``args[index] == prefix + path``."""

    index: int
    prefix: str
    path: Path

    def replaced(self, args: Sequence[str], new_path: str) -> list[str]:
        """``args`` with the config path swapped for ``new_path``."""
        out = list(args)
        out[self.index] = self.prefix + new_path
        return out


def find_config_argument(args: Sequence[str]) -> ConfigArgument:
    """Find ``--deepspeed_config PATH`` (or ``=PATH``, ``--deepscale_config``, Hugging Face's ``--deepspeed PATH``)."""
    for i, arg in enumerate(args):
        for flag in CONFIG_FLAGS:
            if arg == flag and i + 1 < len(args):
                return ConfigArgument(i + 1, "", Path(args[i + 1]))
            if arg.startswith(flag + "="):
                return ConfigArgument(i, flag + "=", Path(arg[len(flag) + 1 :]))
        if arg == HF_CONFIG_FLAG and i + 1 < len(args) and args[i + 1].endswith(".json"):
            return ConfigArgument(i + 1, "", Path(args[i + 1]))
        if arg.startswith(HF_CONFIG_FLAG + "=") and arg.endswith(".json"):
            return ConfigArgument(i, HF_CONFIG_FLAG + "=", Path(arg[len(HF_CONFIG_FLAG) + 1 :]))
    raise LaunchError(
        "--autotuning needs the DeepSpeed config among the script's arguments "
        "(e.g. train.py --deepspeed --deepspeed_config ds_config.json)"
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise LaunchError(f"duplicate key '{key}' in the DeepSpeed config")
        out[key] = value
    return out


def load_user_config(path: Path) -> dict[str, Any]:
    """The user's DeepSpeed config as a dict (a clear error for a missing file or bad JSON)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise LaunchError(
            f"--autotuning: cannot read the DeepSpeed config {str(path)!r}: {err.strerror}"
        ) from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        raise LaunchError(
            f"{path}: invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    if not isinstance(data, dict):
        raise LaunchError(f"{path}: a DeepSpeed config must be a JSON object")
    return data


@dataclass(frozen=True, kw_only=True)
class TuningSettings:
    """The ``autotuning`` section (DeepSpeed's keys and defaults; see the engine's model for each meaning)."""

    enabled: bool = False
    fast: bool = True
    results_dir: str = "autotuning_results"
    exps_dir: str = "autotuning_exps"
    overwrite: bool = True
    start_profile_step: int = 3
    end_profile_step: int = 5
    metric_path: str | None = None
    tuner_type: str = "gridsearch"
    tuner_early_stopping: int = 5
    tuner_num_trials: int = 50
    arg_mappings: Mapping[str, str] = field(default_factory=dict)
    max_train_batch_size: int | None = None
    min_train_batch_size: int = 1
    max_train_micro_batch_size_per_gpu: int = 1024
    min_train_micro_batch_size_per_gpu: int = 1
    num_tuning_micro_batch_sizes: int = 3
    mp_size: int = 1
    metric: str = "throughput"
    model_info: Mapping[str, Any] | None = None
    model_info_path: str | None = None
    memory_per_device: int | None = None

    @property
    def lower_is_better(self) -> bool:
        """Latency is minimised; throughput and FLOPS are maximised."""
        return self.metric == "latency"


# key -> (expected kind, smallest allowed value for numbers)
_KINDS: dict[str, tuple[str, int | None]] = {
    "enabled": ("bool", None),
    "fast": ("bool", None),
    "overwrite": ("bool", None),
    "results_dir": ("str", None),
    "exps_dir": ("str", None),
    "metric_path": ("str?", None),
    "model_info_path": ("str?", None),
    "start_profile_step": ("int", 0),
    "end_profile_step": ("int", 0),
    "tuner_type": ("str", None),
    "metric": ("str", None),
    "tuner_early_stopping": ("int", 1),
    "tuner_num_trials": ("int", 1),
    "arg_mappings": ("mapping?", None),
    "max_train_batch_size": ("int?", 1),
    "min_train_batch_size": ("int", 1),
    "max_train_micro_batch_size_per_gpu": ("int", 1),
    "min_train_micro_batch_size_per_gpu": ("int", 1),
    "num_tuning_micro_batch_sizes": ("int", 1),
    "mp_size": ("int", 1),
    "model_info": ("dict?", None),
    "memory_per_device": ("int?", 1),
}
_CHOICES = {"tuner_type": TUNERS, "metric": (*METRICS, "forward", "step")}


def _check(key: str, value: Any) -> Any:
    kind, low = _KINDS[key]
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    where = f"'autotuning.{key}'"
    if value is None and optional:
        return None
    if kind == "bool" and not isinstance(value, bool):
        raise LaunchError(f"{where}: expected true or false (got {value!r})")
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            raise LaunchError(f"{where}: expected an integer >= {low} (got {value!r})")
    if kind == "str" and not isinstance(value, str):
        raise LaunchError(f"{where}: expected a string (got {value!r})")
    if kind in ("dict", "mapping") and not isinstance(value, dict):
        raise LaunchError(f"{where}: expected an object (got {value!r})")
    if kind == "mapping" and not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise LaunchError(
            f"{where}: expected config keys mapped to script flags, e.g. "
            '{"train_micro_batch_size_per_gpu": "--per_device_train_batch_size"}'
        )
    if key in _CHOICES and value not in _CHOICES[key]:
        raise LaunchError(f"{where}: expected one of {', '.join(_CHOICES[key])} (got {value!r})")
    return value


def parse_settings(section: Any) -> TuningSettings:
    """Validate the ``autotuning`` section; unknown keys get a "did you mean" hint."""
    if section is None:
        return TuningSettings()
    if not isinstance(section, dict):
        raise LaunchError(f"'autotuning' must be an object (got {section!r})")
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key not in _KINDS:
            hint = difflib.get_close_matches(key, list(_KINDS), n=1, cutoff=0.6)
            more = (
                f"; did you mean 'autotuning.{hint[0]}'?"
                if hint
                else f"; valid keys: {', '.join(sorted(_KINDS))}"
            )
            raise LaunchError(f"unknown key 'autotuning.{key}'{more}")
        values[key] = _check(key, value)
    if values.get("arg_mappings") is None:
        values.pop("arg_mappings", None)
    else:
        values["arg_mappings"] = {k.strip(): v.strip() for k, v in values["arg_mappings"].items()}
    settings = TuningSettings(**values)
    if settings.end_profile_step < settings.start_profile_step:
        raise LaunchError(
            f"'autotuning.end_profile_step' {settings.end_profile_step} is before "
            f"'autotuning.start_profile_step' {settings.start_profile_step}"
        )
    if settings.metric not in METRICS:
        raise LaunchError(
            f"'autotuning.metric' {settings.metric!r} is not measured by this engine; use one of "
            f"{', '.join(METRICS)}"
        )
    return settings


def settings_keys() -> set[str]:
    """Every key the ``autotuning`` section accepts (kept equal to the engine's model by a test)."""
    return set(_KINDS)
