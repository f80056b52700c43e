"""Unknown config keys: accepted with one warning each (as DeepSpeed accepts them), or errors in strict mode.

Note: [unknown keys] DeepSpeed reads the keys it knows and ignores the rest of the top level, and public
projects rely on that: LLaMA-Factory's ``_comment`` and ``monitor_config``/``comms_config``, TRL's dotted
``"zero_optimization.stage3_prefetch_bucket_size"`` (DeepSpeed ignores those: it never splits a key on
dots), keys of newer or older DeepSpeed versions. So validation here runs with every section still
forbidding unknown keys (Note [config-base]), and the keys pydantic reports as unknown are taken out
of the config and validated again; each one is then logged once, at WARNING on rank 0, with its full
key path and the closest valid key, so a typo is visible at once. Wrong types or values of known keys
stay errors. Keys starting with ``_`` are comments: dropped without a word. Strict mode (the top-level
``"strict": true`` or ``DS_CONFIG_STRICT=1``) turns every unknown key into the error it was before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from ds_engine.config.errors import _clean_loc, _dotted, closest_key, model_at, model_keys

logger = logging.getLogger("ds_engine")

STRICT_ENV = "DS_CONFIG_STRICT"

# Top-level keys DeepSpeed itself does not read, with what a user most likely meant instead.
IGNORED_BY_DEEPSPEED = {
    "monitor_config": "DeepSpeed does not read it either: its monitors are the top-level sections "
    "'tensorboard', 'wandb', 'csv_monitor' and 'comet'",
    "comms_config": "DeepSpeed does not read it either: its communication log is the top-level section "
    "'comms_logger'",
}

_WARNED: set[str] = set()  # one warning per unknown key per process, however often a config is read


@dataclass(frozen=True)
class UnknownKey:
    """A key no section knows, where it was, and what it most likely meant."""

    path: tuple[str | int, ...]
    hint: str | None

    @property
    def dotted(self) -> str:
        """The key's full path, ``zero_optimization.stagee``."""
        return _dotted(self.path)

    @property
    def is_comment(self) -> bool:
        """A ``_``-prefixed key: a comment, as LLaMA-Factory writes them."""
        return str(self.path[-1]).startswith("_")

    def message(self) -> str:
        """The warning (or, in strict mode, error) sentence for this key."""
        return f"unknown key '{self.dotted}'{self.hint and '; ' + self.hint or ''}"


def strict_mode(raw: dict[str, Any]) -> bool:
    """Whether unknown keys are errors: ``"strict": true`` in the config or ``DS_CONFIG_STRICT=1``."""
    env = os.environ.get(STRICT_ENV, "").strip().lower()
    return raw.get("strict") is True or env in ("1", "true", "yes", "on")


def _hint(root: type[BaseModel], path: Sequence[str | int]) -> str | None:
    key = str(path[-1])
    if len(path) == 1 and key in IGNORED_BY_DEEPSPEED:
        return f"ignored ({IGNORED_BY_DEEPSPEED[key]})"
    if len(path) == 1 and "." in key:
        return _dotted_hint(root, key)
    parent = model_at(root, path[:-1])
    if parent is None:
        return None
    near = closest_key(key, model_keys(parent))
    return f"did you mean '{_dotted([*path[:-1], near])}'?" if near else None


def _dotted_hint(root: type[BaseModel], key: str) -> str:
    """TRL's ``"zero_optimization.x": v`` at the top level: DeepSpeed does not apply it, nor does this."""
    parts = key.split(".")
    section = model_at(root, parts[:-1])
    leaf = parts[-1]
    near = closest_key(leaf, model_keys(section)) if section is not None else None
    where = ".".join(parts[:-1])
    tail = f"; to set it, write '{near}' inside the '{where}' section ('{where}.{near}')" if near else ""
    return f"a dotted key is not applied (DeepSpeed does not apply it either){tail}"


def _drop(data: Any, path: Sequence[str | int], aliases: dict[str, str]) -> tuple[str | int, ...] | None:
    """Remove ``path`` from nested dicts/lists; the path as the user spelled it, or None when it is not there."""
    node, spelled = data, []
    for part in path[:-1]:
        if isinstance(node, dict):
            part = part if part in node else aliases.get(str(part), part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return None
        spelled.append(part)
    last = path[-1]
    if isinstance(node, dict) and last in node:
        del node[last]
        return (*spelled, last)
    return None


def validate_lenient(
    model: type[BaseModel],
    data: dict[str, Any],
    *,
    strict: bool,
    on_error: Callable[[ValidationError], Exception],
    renamed: dict[str, str] | None = None,
) -> tuple[BaseModel, list[UnknownKey]]:
    """Validate ``data`` against ``model``, taking unknown keys out (Note [unknown keys]).

    Returns the validated model and the unknown keys found (comments included). In ``strict`` mode an
    unknown key that is not a comment raises ``on_error(exc)``, as does every other validation error.
    ``renamed`` maps a key as pydantic reports it back to the user's spelling (``bf16`` -> ``bfloat16``).
    """
    found: list[UnknownKey] = []
    for _ in range(8):  # each round removes every unknown key pydantic reported; nesting is shallow
        try:
            return model.model_validate(data), found
        except ValidationError as exc:
            extra = [
                _clean_loc(e["loc"]) for e in exc.errors(include_url=False) if e["type"] == "extra_forbidden"
            ]
            if not extra:
                raise on_error(exc) from None
            keys = [UnknownKey(tuple(loc), _hint(model, loc)) for loc in extra]
            if strict and any(not k.is_comment for k in keys):
                raise _strict_error(model, data, keys, renamed or {}, on_error, exc) from None
            removed = []
            for key in keys:
                spelled = _drop(data, key.path, renamed or {})
                if spelled is not None:
                    removed.append(UnknownKey(spelled, key.hint))
            if not removed:
                raise on_error(exc) from None
            found.extend(removed)
    raise RuntimeError(
        "unknown-key removal did not converge"
    )  # pragma: no cover - pydantic reports all at once


def _strict_error(
    model: type[BaseModel],
    data: dict[str, Any],
    keys: list[UnknownKey],
    renamed: dict[str, str],
    on_error: Callable[[ValidationError], Exception],
    exc: ValidationError,
) -> Exception:
    """The error of strict mode: today's unknown-key error, comments left out (they stay allowed)."""
    if any(k.is_comment for k in keys):
        for key in keys:
            if key.is_comment:
                _drop(data, key.path, renamed)
        try:
            model.model_validate(data)
        except ValidationError as again:
            exc = again
    err = on_error(exc)
    err.args = (
        f'{err.args[0]} (unknown keys are errors in strict mode: "strict": true or {STRICT_ENV}=1)',
        *err.args[1:],
    )
    return err


def warn_unknown(keys: Sequence[UnknownKey], *, rank: int) -> None:
    """Log each unknown key once per process, at WARNING on rank 0 (comments at DEBUG)."""
    for key in keys:
        if key.is_comment:
            logger.debug("config: comment key '%s' ignored", key.dotted)
            continue
        text = key.message()
        if text in _WARNED:
            continue
        _WARNED.add(text)
        if rank == 0:
            logger.warning("DeepSpeed config: %s", text)
