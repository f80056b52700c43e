"""Config errors: one line that names the key path, what was expected, and the closest valid key."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed config is invalid. The message names the key path (``zero_optimization.stage``)."""

    #: A user mistake: an uncaught one prints as one line per rank, its traceback only under
    #: ``DS_DEBUG=1`` (Note [user errors] in ds_comm.rank_exit).
    ds_user_error = True


def closest_key(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name`` (case-insensitive), or None when nothing is close."""
    pool = sorted(set(candidates))
    lowered = {c.lower(): c for c in pool}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[hits[0]] if hits else None


def model_keys(model: type[BaseModel]) -> list[str]:
    """The keys a section accepts: DeepSpeed's spelling (alias) and our field name."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        keys.append(field.alias or name)
        if field.alias and field.alias != name:
            keys.append(name)
    return keys


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``Optional[Foo]`` or ``Foo | bool``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _submodel(arg)
            if found is not None:
                return found
    return None


def model_at(root: type[BaseModel], path: Sequence[str | int]) -> type[BaseModel] | None:
    """The section model reached by following ``path`` (aliases or names) from ``root``."""
    model: type[BaseModel] | None = root
    for part in path:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = next(
            (f for n, f in model.model_fields.items() if part in (n, f.alias)),
            None,
        )
        if field is None:
            return None
        model = _submodel(field.annotation)
    return model


def _dotted(loc: Sequence[str | int]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif parts:
            parts.append(f".{part}")
        else:
            parts.append(str(part))
    return "".join(parts) or "<config>"


def _clean_loc(loc: Sequence[str | int]) -> list[str | int]:
    # pydantic inserts union-member tags (e.g. "ZeroConfig", "bool") and "function-after[...]" into loc.
    return [p for p in loc if isinstance(p, int) or not _is_union_tag(p)]


_TYPE_TAGS = {"bool", "int", "float", "str", "none", "dict", "list", "tuple"}


def _is_union_tag(part: str) -> bool:
    # DeepSpeed's keys are lower_snake_case; union tags are type names or "kind[...]" descriptions.
    return part in _TYPE_TAGS or "[" in part or part[:1].isupper()


def describe_error(err: ErrorDetails, root: type[BaseModel], prefix: str = "") -> str:
    """One readable sentence for one pydantic error entry."""
    loc = _clean_loc(err.get("loc", ()))
    path = prefix + _dotted(loc)
    if err.get("type") == "extra_forbidden":
        parent = model_at(root, loc[:-1])
        key = str(loc[-1]) if loc else ""
        hint = closest_key(key, model_keys(parent)) if parent is not None else None
        section = _dotted(loc[:-1])
        where = f" in '{prefix}{section}'" if loc[:-1] else ""
        msg = f"unknown key '{path}'{where}"
        if hint:
            msg += f"; did you mean '{prefix}{_dotted([*loc[:-1], hint])}'?"
        elif parent is not None:
            msg += f"; valid keys: {', '.join(sorted(model_keys(parent)))}"
        return msg
    given = err.get("input")
    ctx = err.get("ctx") or {}
    if "subkey" in ctx:  # a validator of a dict-valued key naming the entry at fault (optimizer.params.lr)
        path += f".{ctx['subkey']}"
        given = ctx.get("value")
    shown = repr(given) if not isinstance(given, dict) else "{...}"
    text = str(err.get("msg", "invalid value"))
    text = text.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"'{path}': {text} (got {shown})"


def config_error_from(exc: ValidationError, root: type[BaseModel], prefix: str = "") -> DeepSpeedConfigError:
    """Turn a pydantic ValidationError into a DeepSpeedConfigError whose message is one line."""
    seen: list[str] = []
    for err in exc.errors(include_url=False):
        line = describe_error(err, root, prefix)
        if line not in seen:
            seen.append(line)
    return DeepSpeedConfigError("invalid DeepSpeed config: " + "; ".join(seen))
