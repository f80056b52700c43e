"""Where each parameter's elements sit in this rank's shards, and column selection across ranks.

Each rank holds only its shard of every flat unit (:mod:`ds_zero.units`), so one column of a weight
may be spread over ranks. Every operation here puts this rank's elements into a zero tensor (the
column scores, ``cols`` values per weight; the selected columns, ``rows * k``) and sums those tensors
over the shard group: each element is owned by exactly one rank, so the sum is exact.

Note: [owned blocks] A rank's elements of a ``(rows, cols)`` weight are one contiguous range of its
flattening: at most a partial first row, a block of whole rows and a partial last row
(:meth:`ParamView.blocks`), each a 2-D view of the shard. Scores, selected columns and their write-back
work on those views, so no temporary of the weight's full size is made on any rank (a weight not 2-D
is small, and is still filled whole).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

import ds_comm
from ds_zero.units import FlatUnit


@dataclass(frozen=True)
class ParamView:
    """One trainable parameter: its unit, its shape, and the part of it this rank's shard holds."""

    param: nn.Parameter
    unit_index: int
    group_index: int
    shape: torch.Size
    start: int  # owned elements [start, end) of the flattened parameter
    end: int
    shard_offset: int  # where element ``start`` sits in the unit's shard

    @property
    def is_matrix(self) -> bool:
        """2-D weights are selected by column; anything else is wholly selected (Note [zenflow])."""
        return len(self.shape) == 2

    def num_selected(self, topk_ratio: float) -> int:
        """``max(1, int(cols * topk_ratio))`` columns, DeepSpeed's count."""
        return max(1, int(self.shape[1] * topk_ratio))

    def filled(self, shard: Tensor) -> Tensor:
        """A zero tensor of the parameter's shape (fp32) holding this rank's elements from ``shard``."""
        full = torch.zeros(self.shape.numel(), dtype=torch.float32, device=shard.device)
        n = self.end - self.start
        if n:
            full[self.start : self.end] = shard[self.shard_offset : self.shard_offset + n]
        return full.view(self.shape)

    def blocks(self, shard: Tensor) -> list[tuple[int, int, Tensor]]:
        """This rank's elements of a 2-D weight as ``(first row, first column, view of shard)`` blocks,
        each view ``full[row : row + h, col : col + w]`` (Note [owned blocks])."""
        cols = self.shape[1]
        out: list[tuple[int, int, Tensor]] = []
        pos, at = self.start, self.shard_offset
        while pos < self.end:
            row, col = divmod(pos, cols)
            if col or self.end - pos < cols:  # a partial row
                width = min(cols - col, self.end - pos)
                out.append((row, col, shard[at : at + width].view(1, width)))
            else:  # whole rows
                width = (self.end - pos) // cols * cols
                out.append((row, 0, shard[at : at + width].view(-1, cols)))
            pos, at = pos + width, at + width
        return out

    def column_scores(self, shard: Tensor) -> Tensor:
        """The L1 norm of each column over this rank's elements (fp32, ``cols`` values)."""
        scores = torch.zeros(self.shape[1], dtype=torch.float32, device=shard.device)
        for _, col, block in self.blocks(shard):
            scores[col : col + block.shape[1]] += block.float().abs().sum(dim=0)
        return scores

    def columns_of_block(self, col: int, width: int, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Of the sorted selected columns ``idx``: the positions in ``idx`` of those inside
        ``[col, col + width)``, and their offsets in that range."""
        lo, hi = torch.searchsorted(idx, torch.tensor([col, col + width], device=idx.device)).tolist()
        at = torch.arange(lo, hi, device=idx.device)
        return at, idx[lo:hi] - col

    def own_columns(self, shard: Tensor, idx: Tensor) -> Tensor:
        """The ``(rows, k)`` selected columns with this rank's elements, zero elsewhere (fp32)."""
        out = torch.zeros(self.shape[0], idx.numel(), dtype=torch.float32, device=shard.device)
        for row, col, block in self.blocks(shard):
            at, offsets = self.columns_of_block(col, block.shape[1], idx)
            out[row : row + block.shape[0], at] = block[:, offsets].float()
        return out

    def store_columns(self, shard: Tensor, idx: Tensor, values: Tensor) -> None:
        """Write this rank's elements of the ``(rows, k)`` selected columns ``values`` into ``shard``."""
        for row, col, block in self.blocks(shard):
            at, offsets = self.columns_of_block(col, block.shape[1], idx)
            block[:, offsets] = values[row : row + block.shape[0], at].to(block.dtype)

    def store(self, shard: Tensor, full: Tensor) -> None:
        """Write this rank's elements of ``full`` (the parameter's shape) into ``shard``."""
        n = self.end - self.start
        if n:
            flat = full.reshape(-1)[self.start : self.end]
            shard[self.shard_offset : self.shard_offset + n].copy_(flat)


def param_views(units: list[FlatUnit]) -> list[ParamView]:
    """A view of every parameter of ``units``, owned by this rank or not."""
    views = []
    for u, unit in enumerate(units):
        owned = {slot.index: (a, b, off) for slot, a, b, off in unit.owned_slices()}
        for slot, param in zip(unit.slots, unit.params):
            a, b, off = owned.get(slot.index, (0, 0, 0))
            views.append(ParamView(param, u, unit.group_index, slot.shape, a, b, off))
    return views


def _sum_over(parts: list[Tensor], group: Any) -> list[Tensor]:
    """Each of ``parts`` summed over ``group`` (one all-reduce of their concatenation)."""
    if not parts or ds_comm.get_world_size(group) == 1:
        return parts
    flat = torch.cat([p.reshape(-1) for p in parts])
    ds_comm.all_reduce(flat, group=group)
    return [chunk.view_as(p) for chunk, p in zip(flat.split([p.numel() for p in parts]), parts)]


def select_columns(
    views: list[ParamView], shards: list[Tensor], topk_ratio: float, group: Any
) -> list[Tensor | None]:
    """Per view: the sorted indices of its top columns by the L1 norm of ``shards`` (gradient shards, one
    per unit) over the group; None for parameters that are not 2-D. The same on every rank."""
    matrices = [v for v in views if v.is_matrix]
    scores = _sum_over([v.column_scores(shards[v.unit_index]) for v in matrices], group)
    picked = {
        id(v): torch.topk(s, v.num_selected(topk_ratio)).indices.sort().values
        for v, s in zip(matrices, scores)
    }
    if picked and ds_comm.get_world_size(group) > 1:
        # topk on the same sums agrees anyway; rank 0's choice is sent so that ties cannot split ranks
        flat = torch.cat(list(picked.values()))
        src = 0 if group is None else dist.get_global_rank(group, 0)
        ds_comm.broadcast(flat, src=src, group=group)
        chunks = flat.split([t.numel() for t in picked.values()])
        picked = dict(zip(picked.keys(), chunks))
    return [picked.get(id(v)) for v in views]


def gather_selected(
    views: list[ParamView], shards: list[Tensor], indices: list[Tensor | None], group: Any
) -> list[Tensor]:
    """Per view, the whole selected part of ``shards`` (one tensor per unit) in fp32: the ``(rows, k)``
    selected columns of a 2-D weight, the whole parameter otherwise. Collective over ``group``."""
    return [p.contiguous() for p in _sum_over(own_selected(views, shards, indices), group)]


def own_selected(views: list[ParamView], shards: list[Tensor], indices: list[Tensor | None]) -> list[Tensor]:
    """:func:`gather_selected` of this rank's elements only, zero elsewhere (no communication): the
    sum of every rank's is the whole selected part."""
    return [
        view.filled(shards[view.unit_index])
        if idx is None
        else view.own_columns(shards[view.unit_index], idx)
        for view, idx in zip(views, indices)
    ]


def write_selected(
    views: list[ParamView], shards: list[Tensor], indices: list[Tensor | None], values: list[Tensor]
) -> None:
    """Write ``values`` (as :func:`gather_selected` returns them) into this rank's part of ``shards``."""
    for view, idx, value in zip(views, indices, values):
        if view.end == view.start:
            continue
        shard = shards[view.unit_index]
        if idx is None:
            view.store(shard, value)
        else:
            view.store_columns(shard, idx, value)
