"""The user's DeepSpeed config as the autotuner reads it: where it is among the script's arguments, and
its ``autotuning`` section validated without the engine (the launcher stays torch-free) through the
section's one model, :class:`ds_launch.autotuning_config.AutotuningConfig`, which the engine uses too.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ds_launch.autotuning_config import AutotuningConfig
from ds_launch.errors import LaunchError

CONFIG_FLAGS = ("--deepspeed_config", "--deepscale_config")
HF_CONFIG_FLAG = "--deepspeed"  # Hugging Face passes the config path as --deepspeed ds_config.json
METRICS = ("throughput", "latency", "flops")  # the metrics the engine measures (Note [autotuning protocol])


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


# The section's one model, shared with the engine (ds-engine's config re-uses it as its ``autotuning``).
TuningSettings = AutotuningConfig


def _describe(err: Mapping[str, Any]) -> str:
    """One pydantic error entry as one sentence naming the key (``'autotuning.fast': ...``)."""
    loc = [str(part) for part in err.get("loc", ()) if not str(part)[:1].isupper() and "[" not in str(part)]
    if err.get("type") == "extra_forbidden":
        key = loc[-1] if loc else ""
        keys = settings_keys()
        hint = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.6)
        more = (
            f"; did you mean 'autotuning.{hint[0]}'?" if hint else f"; valid keys: {', '.join(sorted(keys))}"
        )
        return f"unknown key '{'.'.join(['autotuning', *loc])}'{more}"
    text = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    given = err.get("input")
    shown = "{...}" if isinstance(given, dict) else repr(given)
    return f"'{'.'.join(['autotuning', *loc])}': {text} (got {shown})"


def parse_settings(section: Any) -> TuningSettings:
    """Validate the ``autotuning`` section with its model; unknown keys are errors with a "did you mean"
    hint here (the engine only warns: a typo would make every experiment tune the wrong thing)."""
    if section is None:
        return TuningSettings()
    if not isinstance(section, dict):
        raise LaunchError(f"'autotuning' must be an object (got {section!r})")
    try:
        settings = TuningSettings.model_validate(section)
    except ValidationError as exc:
        lines = list(dict.fromkeys(_describe(err) for err in exc.errors(include_url=False)))
        raise LaunchError("; ".join(lines)) from None
    if settings.metric not in METRICS:
        raise LaunchError(
            f"'autotuning.metric' {settings.metric!r} is not measured by this engine; use one of "
            f"{', '.join(METRICS)}"
        )
    return settings


def settings_keys() -> set[str]:
    """Every key the ``autotuning`` section accepts."""
    return {field.alias or name for name, field in TuningSettings.model_fields.items()}
