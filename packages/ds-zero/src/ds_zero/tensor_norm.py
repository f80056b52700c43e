"""The global gradient norm of a tensor-parallel model (AutoTP): split parameters count on every
tensor-parallel rank, replicated ones once.

The trainer's default norm spans the shard group only, so with tensor parallelism each tensor-parallel rank
would see a different norm (its own slices) and clip by a different factor, letting the replicated
parameters drift apart. Here the squares of split gradients are summed over the tensor-parallel group as
well; replicated parameters (identical on every tensor-parallel rank) are counted once. A parameter is
split when it carries ``tensor_model_parallel=True`` (DeepSpeed's and Megatron's attribute). ds_zero takes
the group as an argument and knows nothing else of tensor parallelism.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

import ds_comm


def _is_split(p: Tensor) -> bool:
    return bool(getattr(p, "tensor_model_parallel", False))


def _split_parts(trainer: Any, grads: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """(gradient pieces of split parameters, pieces of replicated ones) on this rank."""
    masters = trainer.masters
    units = getattr(masters, "units", None)
    split: list[Tensor] = []
    rep: list[Tensor] = []
    if units is not None:  # stages 1-2: one gradient shard per flat unit
        for unit, grad in zip(units, grads):
            by_index = {slot.index: p for slot, p in zip(unit.slots, unit.params)}
            for slot, lo, hi, at in unit.owned_slices():  # padding is left out: it holds zeros
                (split if _is_split(by_index[slot.index]) else rep).append(grad[at : at + (hi - lo)])
        return split, rep
    for param, holder in zip(masters.model_params, masters.holders):  # stage 0: one holder per parameter
        if holder.grad is not None:
            (split if _is_split(param) else rep).append(holder.grad)
    return split, rep


def _power_sum(ts: list[Tensor], norm_type: float, device: torch.device) -> Tensor:
    """sum(|t|_p ** p) over ``ts`` (max for the inf-norm), one multi-tensor pass, on ``device``."""
    ts = [t for t in ts if t.numel()]
    if not ts:
        return torch.zeros((), dtype=torch.float32, device=device)
    norms = torch.stack(
        [n.float().to(device) for n in torch._foreach_norm([t.detach() for t in ts], norm_type)]
    )
    return norms.max() if math.isinf(norm_type) else norms.pow(norm_type).sum()


def tensor_parallel_norm(
    trainer: Any, tp_group: Any, norm_type: float = 2.0
) -> Callable[[list[Tensor]], Tensor]:
    """A ``norm_fn`` for ``trainer`` (ZeRO stages 0-2) counting split parameters over ``tp_group``."""
    inf = math.isinf(norm_type)
    op = ds_comm.ReduceOp.MAX if inf else ds_comm.ReduceOp.SUM

    def norm(grads: list[Tensor]) -> Tensor:
        split, rep = _split_parts(trainer, grads)
        device = grads[0].device if grads else torch.device("cpu")
        both = torch.stack([_power_sum(split, norm_type, device), _power_sum(rep, norm_type, device)])
        if trainer.sharded_grads and ds_comm.get_world_size(trainer.shard_group) > 1:
            ds_comm.all_reduce(both, op=op, group=trainer.shard_group)
        split_total = both[:1].clone()
        if ds_comm.get_world_size(tp_group) > 1:
            ds_comm.all_reduce(split_total, op=op, group=tp_group)
        if inf:
            return torch.maximum(split_total[0], both[1])
        return (split_total[0] + both[1]).pow(1.0 / norm_type)

    return norm
