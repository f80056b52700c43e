"""Where a config comes from: a JSON path, a dict, base64 JSON, ``args.deepspeed_config``, ``config=``."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ds_engine.config.errors import DeepSpeedConfigError

#: What a DeepSpeed config may be given as: a dict, a JSON file path, or a base64-encoded JSON string.
ConfigSource = str | os.PathLike[str] | Mapping[str, Any]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DeepSpeedConfigError(f"duplicate key '{key}' in DeepSpeed config JSON")
        out[key] = value
    return out


def _parse_json(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise DeepSpeedConfigError(
            f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise DeepSpeedConfigError(
            f"{source}: a DeepSpeed config must be a JSON object, got {type(data).__name__}"
        )
    return data


def read_config_source(source: ConfigSource) -> dict[str, Any]:
    """The config as a plain dict, from a mapping, a JSON file path, or a base64-encoded JSON string."""
    if isinstance(source, Mapping):
        # a deep, plain copy: the caller's dict is never mutated; a non-JSON value such as torch.bfloat16
        # (torch_autocast.dtype, which DeepSpeed takes as an object too) becomes its str()
        return json.loads(json.dumps(dict(source), default=str))
    path = Path(source)
    if path.is_file():
        return _parse_json(path.read_text(encoding="utf-8"), str(path))
    text = str(source)
    try:
        decoded = base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = None
    if decoded and decoded.lstrip().startswith("{"):
        return _parse_json(decoded, "base64 config")
    raise DeepSpeedConfigError(
        f"DeepSpeed config file not found: {text!r} (expected a JSON file, a dict or base64 JSON)"
    )


def choose_config_source(*, args: Any = None, config: Any = None, config_params: Any = None) -> ConfigSource:
    """The one config source among ``args.deepspeed_config``, ``config`` and ``config_params``.

    Giving it in two places is an error, as in DeepSpeed; ``args.deepscale_config`` is DeepSpeed's old name.
    """
    if config is not None and config_params is not None and config is not config_params:
        raise DeepSpeedConfigError(
            "both 'config' and 'config_params' were given to initialize(); pass only one"
        )
    config = config if config is not None else config_params
    from_args = None
    if args is not None:
        from_args = getattr(args, "deepspeed_config", None) or getattr(args, "deepscale_config", None)
    if from_args is not None and config is not None:
        raise DeepSpeedConfigError(
            "a DeepSpeed config was given both as args.deepspeed_config and as initialize(config=...); pass only one"
        )
    chosen = config if config is not None else from_args
    if chosen is None:
        raise DeepSpeedConfigError(
            "no DeepSpeed config: pass config=<dict or path>, or --deepspeed_config <path> "
            "(added by deepspeed.add_config_arguments)"
        )
    if not isinstance(chosen, (str, os.PathLike, Mapping)):
        # DeepSpeed refuses other values with a ValueError; unchecked, they failed in pathlib (TypeError)
        raise DeepSpeedConfigError(
            f"a DeepSpeed config must be a dict, a JSON file path or base64 JSON, got {type(chosen).__name__}"
        )
    return chosen
