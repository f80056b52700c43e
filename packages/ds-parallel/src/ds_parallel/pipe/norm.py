"""The global gradient norm of a pipeline: every stage's gradients, tied copies counted once.

The trainer's own norm spans its data-parallel (shard) group, so each stage would clip by its own norm.
Here each stage's sum of squares (leaving out the non-first copies of tied weights, whose gradients are
equal to the first copy's after the tie reduction) is summed over the pipeline group as well, so every
rank clips by the norm of the whole model, as one module would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import ds_comm


def _owned_pieces(trainer: Any, grads: list[Tensor], skip: set[int]) -> list[Tensor]:
    masters = trainer.masters
    units = getattr(masters, "units", None)
    if units is not None:  # ZeRO 1: one gradient shard per flat unit
        out = []
        for unit, grad in zip(units, grads):
            by_index = {slot.index: p for slot, p in zip(unit.slots, unit.params)}
            for slot, lo, hi, at in unit.owned_slices():
                if id(by_index[slot.index]) not in skip:
                    out.append(grad[at : at + (hi - lo)])
        return out
    return [
        h.grad
        for p, h in zip(masters.model_params, masters.holders)
        if h.grad is not None and id(p) not in skip
    ]


def pipeline_norm(trainer: Any, pipe_group: Any, skip: set[int]) -> Callable[[list[Tensor]], Tensor]:
    """A ``norm_fn`` (L2) for ``trainer`` summing squares over its shard group and ``pipe_group``."""

    def norm(grads: list[Tensor]) -> Tensor:
        pieces = _owned_pieces(trainer, grads, skip)
        total = torch.zeros(1, dtype=torch.float32)
        for g in pieces:
            total += torch.linalg.vector_norm(g.detach().float(), 2.0).pow(2).cpu()
        if trainer.sharded_grads and ds_comm.get_world_size(trainer.shard_group) > 1:
            ds_comm.all_reduce(total, group=trainer.shard_group)
        if ds_comm.get_world_size(pipe_group) > 1:
            ds_comm.all_reduce(total, group=pipe_group)
        device = grads[0].device if grads else torch.device("cpu")
        return total[0].sqrt().to(device)

    return norm
