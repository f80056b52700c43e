"""Which submodules become shard units, which parameters stay whole, which units stay gathered.

Pure logic over the module tree (no process group), so it is tested directly. The rule is Note
[units] in :mod:`ds_zero.stage3.policy`:

1. A parameter with at most ``persistence_threshold`` elements is *persistent*: it stays whole and is
   handled like a stage-2 parameter, as long as the persistent elements, counted in model order, stay
   within ``model_persistence_threshold``. A scalar is always persistent (FSDP2 cannot shard 0-d
   tensors).
2. If the whole model fits in ``cap`` elements it is one unit. Otherwise, walking from the root, a
   child module becomes a unit when its not-yet-assigned shardable
   parameters fit in ``cap`` elements (or it has no children to split further) and it is *closed*:
   every module that holds or uses (``register_external_parameter``) one of its parameters lies in
   its subtree, and has a ``forward`` (containers such as ``ModuleList`` are never called). Otherwise
   the walk descends into it, and afterwards such a module becomes a unit for whatever its children
   left. The root is always the last unit. A *leaf* module (:mod:`ds_zero.stage3.leaf`) is never
   descended into: it is one unit whatever its size, or, when it cannot be a unit, part of the unit
   that encloses it.
3. A module in ``keep_in_root`` (the model's output embeddings, Note [head in the root unit]) is never a
   unit and its parameters are left to no other unit: they belong to the root.
4. ``keep_gathered``: going from the last unit back, a unit stays gathered from forward to backward
   while the elements gathered in between (``2 x`` the later units, which are gathered in forward and
   again in backward) are at most ``max_reuse_distance`` and the kept units fit ``max_live``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import nn

from ds_zero.stage3.leaf import z3_leaf_module
from ds_zero.stage3.status import full_dim, full_numel

Path = tuple[str, ...]


@dataclass
class UnitPlan:
    """The outcome of :func:`plan_units`."""

    units: list[nn.Module]  # children before parents; the root is last
    names: dict[int, str]  # id(unit) -> qualified name ("" for the root)
    numel: dict[int, int]  # id(unit) -> shardable elements the unit manages
    persistent: list[nn.Parameter]  # parameters that stay whole (rule 1)
    keep_gathered: set[int] = field(default_factory=set)  # id(unit) of units kept from forward to backward


class _Tree:
    """Every occurrence (path) of every module, and who holds each parameter."""

    def __init__(self, root: nn.Module, external: Callable[[nn.Module], Iterable[nn.Parameter]]) -> None:
        self.module_at: dict[Path, nn.Module] = {}
        self.holders: dict[int, list[Path]] = {}  # id(param) -> paths of modules that hold/use it
        self.param: dict[int, nn.Parameter] = {}
        for name, module in root.named_modules(remove_duplicate=False):
            path = tuple(name.split(".")) if name else ()
            self.module_at[path] = module
            used = [p for p in module._parameters.values() if p is not None] + list(external(module))
            for p in used:
                self.param[id(p)] = p
                self.holders.setdefault(id(p), []).append(path)
        self.subtree: dict[Path, set[int]] = {path: set() for path in self.module_at}
        for pid, paths in self.holders.items():
            for path in paths:
                for k in range(len(path) + 1):
                    self.subtree[path[:k]].add(pid)

    def closed(self, path: Path) -> bool:
        """Whether every holder of every parameter under ``path`` lies under ``path``."""
        return all(h[: len(path)] == path for pid in self.subtree[path] for h in self.holders[pid])

    def can_be_unit(self, path: Path) -> bool:
        """Closed, and has a forward of its own (containers such as ModuleList are never called)."""
        return type(self.module_at[path]).forward is not nn.Module.forward and self.closed(path)

    def children(self, path: Path) -> list[Path]:
        return [path + (name,) for name, _ in self.module_at[path].named_children()]


def plan_units(
    root: nn.Module,
    *,
    cap: int,
    persistence_threshold: int,
    max_reuse_distance: int = 0,
    max_live: int = 0,
    external: Callable[[nn.Module], Iterable[nn.Parameter]] = lambda m: (),
    model_persistence_threshold: int | None = None,
    is_leaf: Callable[[nn.Module], bool] = z3_leaf_module,
    keep_in_root: Iterable[nn.Module] = (),
) -> UnitPlan:
    """Apply the unit rule (module docstring) to ``root``."""
    tree = _Tree(root, external)
    persistent = _persistent(tree, persistence_threshold, model_persistence_threshold)
    assigned: set[int] = set(persistent)
    reserved = {id(p) for m in keep_in_root for p in m.parameters()} - assigned  # rule 3: the root's
    # model order, not set order: every rank must walk the persistent parameters identically
    plan = UnitPlan(
        units=[], names={}, numel={}, persistent=[p for pid, p in tree.param.items() if pid in persistent]
    )

    kept_at = [path for path, m in tree.module_at.items() if any(m is k for k in keep_in_root)]

    def free(path: Path) -> set[int]:
        return tree.subtree[path] - assigned - (reserved if path else set())

    def can_be_unit(path: Path) -> bool:
        # fully_shard takes every parameter below a unit: no unit may enclose a module kept in the root
        return tree.can_be_unit(path) and not any(kept[: len(path)] == path for kept in kept_at)

    def make_unit(path: Path) -> None:
        pids = free(path)
        module = tree.module_at[path]
        if id(module) in plan.names:  # a shared module seen at a second path: already a unit
            return
        plan.units.append(module)
        plan.names[id(module)] = ".".join(path)
        plan.numel[id(module)] = sum(full_numel(tree.param[pid]) for pid in pids)
        assigned.update(pids)

    def visit(path: Path) -> None:
        pids = free(path)
        if not pids:
            return
        if is_leaf(tree.module_at[path]):
            if can_be_unit(path):
                make_unit(path)
            return
        size = sum(full_numel(tree.param[pid]) for pid in pids)
        splittable = any(free(child) for child in tree.children(path))
        if can_be_unit(path) and (size <= cap or not splittable):
            make_unit(path)
            return
        for child in tree.children(path):
            visit(child)
        if free(path) and can_be_unit(path):
            make_unit(path)

    whole = sum(full_numel(tree.param[pid]) for pid in free(())) <= cap or is_leaf(root)
    if not whole:
        for child in tree.children(()):
            visit(child)
    root_pids = free(())
    plan.units.append(root)
    plan.names[id(root)] = ""
    plan.numel[id(root)] = sum(full_numel(tree.param[pid]) for pid in root_pids)
    plan.keep_gathered = _keep_gathered(root, plan, max_reuse_distance, max_live)
    return plan


def _persistent(tree: _Tree, threshold: int, model_threshold: int | None) -> set[int]:
    """Rule 1, in model order (DeepSpeed's order, so the same parameters stay whole)."""
    budget = sys.maxsize if model_threshold is None else model_threshold
    out, total = set(), 0
    for pid, p in tree.param.items():
        numel = full_numel(p)  # a zero.Init shard is empty here: count its full size
        if full_dim(p) == 0:
            out.add(pid)
        elif numel <= threshold and total + numel <= budget:
            out.add(pid)
            total += numel
    return out


def _keep_gathered(root: nn.Module, plan: UnitPlan, max_reuse_distance: int, max_live: int) -> set[int]:
    """Rule 4. Units are taken in registration order, the usual order of their forward calls."""
    position = {id(m): i for i, m in enumerate(root.modules())}
    ordered = sorted((m for m in plan.units if m is not root), key=lambda m: position[id(m)])
    keep: set[int] = set()
    later, live = 0, 0
    for module in reversed(ordered):
        size = plan.numel[id(module)]
        if 2 * later <= max_reuse_distance and live + size <= max_live:
            keep.add(id(module))
            live += size
        later += size
    return keep
