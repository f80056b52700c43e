"""What each config key does in this design: applied, no effect, or refused.

Note: [key effects] A config section that has an effect table (``KEYS`` next to its model, e.g.
:data:`ds_engine.config.zero.ZERO_KEYS`) says for every field one of:

* :func:`applied` -- the value changes what runs; ``where`` names the ``module:function`` that reads it.
  A test reads that function's source and fails when the field is not read there.
* :func:`no_effect` -- accepted for DeepSpeed compatibility but meaningless in this design; setting it to
  anything but its default logs one warning with ``why``.
* :func:`refused` -- a feature not built; a config for which ``when(section)`` holds is an error.
* :func:`section` -- the field holds a config section, whose own table declares each of its keys.

Every section of the config, at every level, has a table (the root's is
:data:`ds_engine.config.top_keys.TOP_KEYS`); a test walks the models and fails on a field without an entry.
Refusals and "no effect" warnings of a section are only checked when the section is present (a section
field that is ``None`` has nothing set).

The config reference (docs/gen_config_reference.py), the engine's warnings (:func:`no_effect_settings`)
and errors (:func:`refused_settings`), and the autotuner's search space all derive from these tables, so
a key cannot be documented as working, tuned, and silently ignored at the same time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

Kind = Literal["applied", "no effect", "refused"]


@dataclass(frozen=True)
class Effect:
    """What one key does: ``kind``; ``where`` (applied: the ``module:qualname[#attr]`` places that read it)
    and ``why`` (a qualification, or the reason it has no effect or is refused). ``when`` (any kind): the
    values that are refused, with ``refuse_why``."""

    kind: Kind
    where: tuple[str, ...] = ()
    why: str = ""
    when: Callable[[Any], bool] | None = None
    refuse_why: str = ""
    gate: str = ""
    """Appended to the key path in the refusal (``=nvme``, `` (ZeRO++)``): which value is refused."""
    nested: bool = False
    """The field is a section; its keys are declared in the section's own table."""

    def describe(self) -> str:
        """One line for the config reference."""
        if self.nested:
            return "section: each key's effect is in its own table" + (
                f"; refused: {self.refuse_why}" if self.refuse_why else ""
            )
        if self.kind == "applied":
            places = ", ".join(w.split("#")[0] for w in self.where)
            text = f"applied ({places})" + (f": {self.why}" if self.why else "")
            return text + (f"; refused: {self.refuse_why}" if self.refuse_why else "")
        return f"{self.kind}: {self.why}"


def applied(
    *where: str,
    why: str = "",
    refuse_when: Callable[[Any], bool] | None = None,
    refuse_why: str = "",
    gate: str = "",
) -> Effect:
    """The key is read by each of ``where`` (``module:qualname``, with ``#attr`` when the reader's
    attribute is named differently); ``why`` qualifies it (e.g. which stages). Values for which
    ``refuse_when(section)`` holds are refused with ``refuse_why``."""
    return Effect("applied", where=where, why=why, when=refuse_when, refuse_why=refuse_why, gate=gate)


def no_effect(
    why: str, *, refuse_when: Callable[[Any], bool] | None = None, refuse_why: str = "", gate: str = ""
) -> Effect:
    """The key is accepted and does nothing here; a non-default value warns with ``why``. Values for which
    ``refuse_when(section)`` holds (a not-built feature switched on) are refused with ``refuse_why``."""
    return Effect("no effect", why=why, when=refuse_when, refuse_why=refuse_why, gate=gate)


def refused(why: str, when: Callable[[Any], bool], gate: str = "") -> Effect:
    """The key names a feature not built: a section for which ``when(section)`` holds is an error."""
    return Effect("refused", why=why, when=when, refuse_why=why, gate=gate)


def section(
    *, refuse_when: Callable[[Any], bool] | None = None, refuse_why: str = "", gate: str = ""
) -> Effect:
    """The field is a config section: its keys are declared in the section's own table. ``refuse_when(parent)``
    refuses the section as a whole (a feature tree that switches something on)."""
    return Effect("applied", when=refuse_when, refuse_why=refuse_why, gate=gate, nested=True)


def _tables() -> dict[type[BaseModel], tuple[str, Mapping[str, Effect]]]:
    # Imported here: the section modules import this one for the helpers above.
    from ds_engine.config import feature_keys, monitoring, optim, precision, top_keys, zero

    return {
        **top_keys.TABLES,
        zero.ZeroConfig: ("zero_optimization", zero.ZERO_KEYS),
        zero.OffloadOptimizerConfig: ("zero_optimization.offload_optimizer", zero.OFFLOAD_OPTIMIZER_KEYS),
        zero.OffloadParamConfig: ("zero_optimization.offload_param", zero.OFFLOAD_PARAM_KEYS),
        zero.ZenFlowConfig: ("zero_optimization.zenflow", zero.ZENFLOW_KEYS),
        zero.LeafModuleConfig: ("zero_optimization.leaf_module", zero.LEAF_MODULE_KEYS),
        **optim.TABLES,
        **precision.TABLES,
        **monitoring.TABLES,
        **feature_keys.TABLES,
    }


def table_for(model: type[BaseModel]) -> Mapping[str, Effect] | None:
    """The effect table of a config section, or None for sections that have none yet."""
    entry = _tables().get(model)
    return entry[1] if entry else None


def tables() -> dict[type[BaseModel], tuple[str, Mapping[str, Effect]]]:
    """Every section that has an effect table: model -> (its key path, its table)."""
    return _tables()


def _sections(root: BaseModel) -> Iterator[tuple[str, BaseModel, Mapping[str, Effect]]]:
    """(path, section instance, table) for ``root`` and every section below it that is present, depth first."""
    known = _tables()
    pending: list[tuple[str, BaseModel]] = [("", root)]
    while pending:
        path, node = pending.pop(0)
        found = known.get(type(node))
        if found is None:
            continue
        yield found[0], node, found[1]
        children = [
            (f"{path}.{_key(node, n)}" if path else _key(node, n), getattr(node, n))
            for n in type(node).model_fields
        ]
        pending[0:0] = [(p, child) for p, child in children if isinstance(child, BaseModel)]


def _default(model: type[BaseModel], name: str) -> Any:
    field = model.model_fields[name]
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def no_effect_settings(root: BaseModel) -> list[str]:
    """A warning sentence for each "no effect" key of ``root`` set to something other than its default."""
    out = []
    for path, section, table in _sections(root):
        for name, effect in table.items():
            if (
                effect.kind == "no effect"
                and name in section.model_fields_set
                and getattr(section, name) != _default(type(section), name)
            ):
                out.append(f"'{_join(path, _key(section, name))}' has no effect here: {effect.why}")
    return out


def refused_settings(root: BaseModel) -> list[str]:
    """The key path (with its gate, e.g. ``...device=nvme``) of each key of ``root`` whose refusal
    condition holds; the caller words the error (``unsupported_features`` in :mod:`ds_engine.config.root`)."""
    out = []
    for path, section, table in _sections(root):
        for name, effect in table.items():
            if effect.when is not None and effect.when(section):
                out.append(f"{_join(path, _key(section, name))}{effect.gate}")
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _key(section: BaseModel, name: str) -> str:
    field = type(section).model_fields[name]
    return field.alias or name
