"""Flat units: the layout ZeRO stages 1 and 2 shard.

Parameters are grouped, in reverse registration order (the order their gradients become ready in
backward), into *units* of about ``bucket_numel`` elements. Each unit is one flat buffer, padded to a
multiple of the data-parallel world size and split into equal chunks: rank ``r`` owns chunk ``r``.
Because every unit splits evenly, one ``reduce_scatter_tensor`` of a unit's gradients hands each rank
exactly its gradient shard, and one ``all_gather_into_tensor`` rebuilds the unit's parameters.

Note [parameters are views]: after :func:`build_units`, each parameter's ``.data`` is a view into its
unit's flat buffer, so the all-gather of updated shards writes the model's parameters in place with no
copy, and (in full precision) the rank's chunk of the buffer *is* its master shard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import ds_comm


@dataclass(frozen=True)
class ParamSlot:
    """Where one parameter lives inside its unit."""

    index: int  # the parameter's position in the model-wide ordering (stable across world sizes)
    offset: int  # element offset inside the unit's flat buffer
    numel: int
    shape: torch.Size


@dataclass
class FlatUnit:
    """One flat buffer of parameters, sharded evenly over ``world_size`` ranks."""

    params: list[torch.nn.Parameter]
    slots: list[ParamSlot]
    flat: torch.Tensor  # full (padded) parameter buffer in the model's dtype
    world_size: int
    rank: int
    group_index: int  # which optimizer param group the unit's parameters belong to
    ready: int = field(default=0)  # gradients accumulated this backward (see the reducer)
    # Another process group than the trainer's for this unit's param group (expert parameters), or None:
    # a ds_zero.group_reduction.GroupReduction (Note [group reductions]); world_size/rank are within it.
    reduction: Any = None

    @property
    def padded_numel(self) -> int:
        return self.flat.numel()

    @property
    def shard_numel(self) -> int:
        return self.padded_numel // self.world_size

    @property
    def shard_range(self) -> tuple[int, int]:
        start = self.rank * self.shard_numel
        return start, start + self.shard_numel

    def shard_view(self, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """This rank's chunk of ``buffer`` (the parameter buffer by default)."""
        start, end = self.shard_range
        return (self.flat if buffer is None else buffer)[start:end]

    def owned_slices(self) -> list[tuple[ParamSlot, int, int, int]]:
        """For each parameter overlapping this rank's chunk: (slot, start, end within the parameter,
        offset within the shard). Used to save and load state per parameter, independent of layout."""
        lo, hi = self.shard_range
        out = []
        for slot in self.slots:
            a, b = max(lo, slot.offset), min(hi, slot.offset + slot.numel)
            if a < b:
                out.append((slot, a - slot.offset, b - slot.offset, a - lo))
        return out


def _padded(numel: int, world_size: int) -> int:
    return -(-numel // world_size) * world_size


def plan_units(numels: Sequence[int], bucket_numel: int) -> list[list[int]]:
    """Group parameter positions into units of about ``bucket_numel`` elements, last parameter first.

    A parameter larger than the bucket gets a unit of its own; units never split a parameter.
    """
    units: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i in reversed(range(len(numels))):
        if current and size + numels[i] > bucket_numel:
            units.append(current)
            current, size = [], 0
        current.append(i)
        size += numels[i]
    if current:
        units.append(current)
    return units


def build_units(
    param_groups: Sequence[Sequence[torch.nn.Parameter]],
    *,
    bucket_numel: int,
    world_size: int,
    rank: int,
    reductions: Mapping[int, Any] | None = None,
) -> list[FlatUnit]:
    """Flatten each param group's parameters into sharded units and rebind ``p.data`` to views.

    Parameters are numbered across groups in the given order; that numbering (``ParamSlot.index``)
    is what checkpoints use, so it must not depend on the world size or the bucket size. A param group
    listed in ``reductions`` (``GroupReduction``, keyed by group index) is sharded over that group instead.
    """
    units: list[FlatUnit] = []
    index_base = 0
    for group_index, params in enumerate(param_groups):
        params = list(params)
        reduction = (reductions or {}).get(group_index)
        g_world, g_rank = (
            (world_size, rank)
            if reduction is None
            else (ds_comm.get_world_size(reduction.group), ds_comm.get_rank(reduction.group))
        )
        for positions in plan_units([p.numel() for p in params], bucket_numel):
            members = [params[i] for i in positions]
            kinds = {(p.dtype, p.device) for p in members}
            if len(kinds) > 1:
                raise ValueError(
                    f"param group {group_index} mixes dtypes/devices {sorted(map(str, kinds))}; ZeRO needs one "
                    "dtype and device per param group (put the others in a group of their own)"
                )
            total = sum(p.numel() for p in members)
            ref = members[0]
            # empty, not zeros: the parameters overwrite all but the padding (one pass over the memory)
            flat = torch.empty(_padded(total, g_world), dtype=ref.dtype, device=ref.device)
            flat[total:].zero_()
            slots, offset = [], 0
            for i, p in zip(positions, members):
                flat[offset : offset + p.numel()].copy_(p.detach().reshape(-1))
                slots.append(ParamSlot(index=index_base + i, offset=offset, numel=p.numel(), shape=p.shape))
                p.data = flat[offset : offset + p.numel()].view(p.shape)
                offset += p.numel()
            units.append(
                FlatUnit(
                    params=members,
                    slots=slots,
                    flat=flat,
                    world_size=g_world,
                    rank=g_rank,
                    group_index=group_index,
                    reduction=reduction,
                )
            )
        index_base += len(params)
    return units


def cast_units(units: list[FlatUnit], dtype: torch.dtype) -> None:
    """Re-create each unit's buffer in ``dtype`` and rebind its parameters' views to it."""
    for unit in units:
        if unit.flat.dtype == dtype:
            continue
        unit.flat = unit.flat.to(dtype)
        for slot, p in zip(unit.slots, unit.params):
            p.data = unit.flat[slot.offset : slot.offset + slot.numel].view(slot.shape)
