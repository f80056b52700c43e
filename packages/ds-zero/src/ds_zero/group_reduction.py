"""Reducing different optimizer param groups over different process groups (mixture-of-experts).

Note: [group reductions] Expert parameters differ between the ranks of an expert-parallel group, so
their gradients must not be averaged over the data-parallel group. The engine passes ``wrap`` one
:class:`GroupReduction` per param group that is reduced differently (keyed by the group's index):
gradients are summed over ``group`` and divided by ``average_over`` ranks, which may be more than the
group holds (DeepSpeed divides expert gradients by the data-parallel size, so their value does not
depend on the expert-parallel size: the all-to-all backward already summed every rank's tokens).
``norm_group`` names the ranks whose copies of these parameters differ: with replicated gradients
(stage 0) the squared norm of these gradients is summed over it, so the global norm (and clipping)
covers the whole model. ds_zero never builds these groups; it takes them as arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import ds_comm


@dataclass(frozen=True, eq=False)
class GroupReduction:
    """How one optimizer param group's gradients are reduced (Note [group reductions])."""

    group: Any
    average_over: int
    norm_group: Any = None


def group_index_of(optimizer: torch.optim.Optimizer) -> dict[int, int]:
    """``id(param)`` -> the index of its optimizer param group."""
    return {id(p): g for g, group in enumerate(optimizer.param_groups) for p in group["params"]}


def split_by_reduction(
    holders: list[Tensor], optimizer: torch.optim.Optimizer, reductions: Mapping[int, GroupReduction]
) -> list[tuple[GroupReduction | None, list[Tensor]]]:
    """``holders`` (in their order) grouped by the reduction of their param group; None: the default one."""
    index_of = group_index_of(optimizer)
    parts: dict[int, tuple[GroupReduction | None, list[Tensor]]] = {}
    for h in holders:
        r = reductions.get(index_of.get(id(h), -1))
        parts.setdefault(id(r), (r, []))[1].append(h)
    return list(parts.values())


class RoutedReduce:
    """Several reducers, each owning the holders of some param groups; the trainer sees one reducer."""

    def __init__(self, parts: list[tuple[Any, list[Tensor]]]) -> None:
        self.parts = [reducer for reducer, _ in parts]
        self._owner = {id(h): reducer for reducer, holders in parts for h in holders}
        self._sync = True

    @property
    def sync(self) -> bool:
        """Whether gradients are communicated in this backward (all parts alike)."""
        return self._sync

    @sync.setter
    def sync(self, value: bool) -> None:
        self._sync = value
        for reducer in self.parts:
            reducer.sync = value

    def mark_ready(self, holder: Tensor) -> None:
        """Forward to the reducer that owns ``holder``."""
        self._owner[id(holder)].mark_ready(holder)

    def finish(self) -> None:
        """Finish every part (each is collective over its own group; all ranks call them in one order)."""
        for reducer in self.parts:
            reducer.finish()


def replicated_norm(
    parts: list[tuple[GroupReduction | None, list[Tensor]]], norm_type: float = 2.0
) -> Callable[[list[Tensor]], Tensor]:
    """The global gradient norm when gradients are replicated but some parts differ across ``norm_group``."""

    def norm(_grads: list[Tensor]) -> Tensor:
        total: Tensor | None = None
        for r, holders in parts:
            grads = [h.grad.float() for h in holders if h.grad is not None]
            device = holders[0].device if holders else torch.device("cpu")
            local = (
                torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g, norm_type) for g in grads]), norm_type
                )
                if grads
                else torch.zeros((), device=device)
            )
            if math.isinf(norm_type):
                value = local.reshape(1).clone()
                if r is not None and r.norm_group is not None and ds_comm.get_world_size(r.norm_group) > 1:
                    ds_comm.all_reduce(value, op=ds_comm.ReduceOp.MAX, group=r.norm_group)
                total = value[0] if total is None else torch.maximum(total, value[0])
                continue
            value = local.pow(norm_type).reshape(1)
            if r is not None and r.norm_group is not None and ds_comm.get_world_size(r.norm_group) > 1:
                ds_comm.all_reduce(value, group=r.norm_group)
            total = value[0] if total is None else total + value[0]
        if total is None:
            return torch.zeros(())
        return total if math.isinf(norm_type) else total.pow(1.0 / norm_type)

    return norm


__all__ = ["GroupReduction", "RoutedReduce", "group_index_of", "replicated_norm", "split_by_reduction"]
