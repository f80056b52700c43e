"""ZeRO-3 *leaf modules*: modules gathered as one piece, never split into several shard units.

A leaf is what DeepSpeed calls a module whose submodules get no hooks of their own: entering it
gathers all of its parameters. Two kinds of model need that:

* mixture-of-experts blocks, whose router calls a data-dependent subset of the experts, so two ranks
  call different experts; were each expert a unit of its own, their gathers would not pair up
  (see Note [divergence] in :mod:`ds_zero.stage3.hooks`);
* very fine-grained modules (many tiny submodules), where per-submodule hooks cost more than the
  gather they would save.

A module is a leaf when its ``_z3_leaf`` attribute is true (DeepSpeed's flag, so models flagged with
DeepSpeed's own helpers work unchanged). The helpers below set it by class, by qualified name or by
name suffix (the ``zero_optimization.leaf_module`` section), and :func:`mark_fine_grained` sets it
from ``stage3_module_granularity_threshold``. The unit rule (:mod:`ds_zero.stage3.plan`) then makes a
leaf one unit whatever its size, or leaves it inside its parent's unit when it cannot be a unit.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Sequence

from torch import nn

from ds_zero.stage3.status import full_numel

log = logging.getLogger(__name__)

# Beyond this many elements a module is never made a leaf by granularity: one gather that large
# would raise the live-parameter peak more than the saved hooks are worth (DeepSpeed's bound too).
MAX_FINE_GRAINED_LEAF_NUMEL = 10**9


def z3_leaf_module(module: nn.Module) -> bool:
    """Whether ``module`` is flagged as a ZeRO-3 leaf."""
    return bool(getattr(module, "_z3_leaf", False))


def z3_leaf_parameter(param: nn.Parameter) -> bool:
    """Whether ``param`` belongs to a leaf module (marked when stage 3 shards the model)."""
    return hasattr(param, "ds_z3_leaf_module")


def set_z3_leaf_module(module: nn.Module, flag: bool) -> None:
    """Flag (or unflag) one module as a leaf."""
    # nn.Module.__setattr__'s stub takes tensors and modules only; any value is stored at run time
    module._z3_leaf = flag  # type: ignore[assignment]


def get_z3_leaf_modules(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` flagged as a leaf."""
    return [m for m in model.modules() if z3_leaf_module(m)]


def _user_class(module: nn.Module) -> type:
    """The module's own class: ``fully_shard`` swaps in a subclass ``FSDP<Name>(FSDPModule, <Name>)``."""
    cls = type(module)
    bases = cls.__bases__
    return bases[1] if len(bases) == 2 and bases[0].__name__ == "FSDPModule" else cls


def _class_matches(module: nn.Module, wanted: type | str) -> bool:
    if isinstance(wanted, type):
        return isinstance(module, wanted)
    cls = _user_class(module)
    return wanted in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}")


def _flag_classes(
    model: nn.Module, classes: Sequence[type | str], flag: bool, raise_if_not_found: bool
) -> list[nn.Module]:
    bad = [c for c in classes if not isinstance(c, (type, str))]
    if bad:
        raise TypeError(f"leaf module classes must be classes or class names, got {bad!r}")
    matched = [m for m in model.modules() if any(_class_matches(m, c) for c in classes)]
    for m in matched:
        set_z3_leaf_module(m, flag)
    if not matched and raise_if_not_found:
        raise ValueError(f"no module of class {[getattr(c, '__name__', c) for c in classes]} in the model")
    return matched


def set_z3_leaf_modules(
    model: nn.Module, leaf_module_classes: Sequence[type | str], raise_if_not_found: bool = True
) -> list[nn.Module]:
    """Flag every module of ``model`` that is an instance of (or whose class is named, short or fully
    qualified, as) one of ``leaf_module_classes``; returns them."""
    return _flag_classes(model, leaf_module_classes, True, raise_if_not_found)


def unset_z3_leaf_modules(
    model: nn.Module, leaf_module_classes: Sequence[type | str], raise_if_not_found: bool = True
) -> list[nn.Module]:
    """Clear the flag that :func:`set_z3_leaf_modules` set."""
    return _flag_classes(model, leaf_module_classes, False, raise_if_not_found)


def set_z3_leaf_modules_by_name(
    model: nn.Module, module_names: Iterable[str], flag: bool = True, raise_if_not_found: bool = True
) -> tuple[list[nn.Module], list[str]]:
    """Flag the modules at the given ``named_modules()`` names; returns (matched, missing names)."""
    by_name = dict(model.named_modules())
    matched, missing = [], []
    for name in module_names:
        module = by_name.get(name)
        if module is None:
            missing.append(name)
            continue
        set_z3_leaf_module(module, flag)
        matched.append(module)
    if missing and raise_if_not_found:
        raise ValueError(f"no module named {missing} in the model")
    return matched, missing


def set_z3_leaf_modules_by_suffix(
    model: nn.Module, module_name_suffixes: Iterable[str], flag: bool = True, raise_if_not_found: bool = True
) -> tuple[list[nn.Module], list[str]]:
    """Flag the modules whose ``named_modules()`` name ends with one of the suffixes; returns
    (matched, suffixes that matched nothing)."""
    named = list(model.named_modules())
    matched: dict[int, nn.Module] = {}
    missing = []
    for suffix in module_name_suffixes:
        hits = [m for name, m in named if name.endswith(suffix)]
        if not hits:
            missing.append(suffix)
        for m in hits:
            set_z3_leaf_module(m, flag)
            matched.setdefault(id(m), m)
    if missing and raise_if_not_found:
        raise ValueError(f"no module name ends with {missing} in the model")
    return list(matched.values()), missing


def apply_leaf_config(
    model: nn.Module,
    *,
    classes: Sequence[str] = (),
    names: Sequence[str] = (),
    name_suffixes: Sequence[str] = (),
) -> list[nn.Module]:
    """Apply a ``zero_optimization.leaf_module`` section; returns the flagged modules. Classes that
    match nothing are silent (DeepSpeed's defaults name transformers classes most models lack);
    names and suffixes that match nothing are logged."""
    found: dict[int, nn.Module] = {}
    for m in set_z3_leaf_modules(model, list(classes), raise_if_not_found=False) if classes else []:
        found.setdefault(id(m), m)
    matched, missing_names = set_z3_leaf_modules_by_name(model, names, raise_if_not_found=False)
    for m in matched:
        found.setdefault(id(m), m)
    matched, missing_suffixes = set_z3_leaf_modules_by_suffix(model, name_suffixes, raise_if_not_found=False)
    for m in matched:
        found.setdefault(id(m), m)
    if missing_names or missing_suffixes:
        log.warning(
            "zero_optimization.leaf_module: nothing in the model matches %s",
            [*missing_names, *missing_suffixes],
        )
    return list(found.values())


def _is_container(module: nn.Module) -> bool:
    return isinstance(
        module, (nn.ModuleList, nn.ModuleDict, nn.Sequential, nn.ParameterList, nn.ParameterDict)
    )


def granularity(model: nn.Module) -> dict[int, int]:
    """id(module) -> its granularity: parameter elements per layer beneath it, where a layer is a
    module with parameters that is not a container (``ModuleList``, ``Sequential``, ...). Containers,
    modules without parameters and modules of no children get ``sys.maxsize`` (never fine-grained)."""
    out: dict[int, int] = {}

    def walk(module: nn.Module) -> tuple[int, int]:  # (layers, elements) in the subtree
        own = sum(full_numel(p) for p in module.parameters(recurse=False))
        children = list(module.children())
        if not children:
            out[id(module)] = sys.maxsize
            return (1, own) if own else (0, 0)
        layers, numel = 0, own
        for child in children:
            child_layers, child_numel = walk(child)
            layers, numel = layers + child_layers, numel + child_numel
        if not numel or _is_container(module):
            out[id(module)] = sys.maxsize
            return layers, numel
        layers += 1
        out[id(module)] = numel // layers if numel <= MAX_FINE_GRAINED_LEAF_NUMEL else sys.maxsize
        return layers, numel

    walk(model)
    return out


def mark_fine_grained(model: nn.Module, threshold: int) -> list[nn.Module]:
    """``stage3_module_granularity_threshold``: flag, from the root down, the outermost modules whose
    :func:`granularity` is at most ``threshold``; returns them. 0 (the default) flags nothing."""
    if threshold <= 0:
        return []
    values = granularity(model)
    flagged: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        if values.get(id(module), sys.maxsize) <= threshold:
            set_z3_leaf_module(module, True)
            flagged.append(module)
            return
        for child in module.children():
            visit(child)

    visit(model)
    return flagged
