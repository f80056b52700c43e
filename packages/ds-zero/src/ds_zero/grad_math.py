"""Stateless gradient arithmetic: unscale + overflow check, global norm, clipping.

Replicated gradients (stage 0) need no communication; for sharded gradients (``sharded=True``,
stages 1-3) partial results are summed over ``group`` (None: the world), so every rank agrees on the
overflow flag and on the norm.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

import ds_comm

CLIP_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_ and DeepSpeed: coef = max_norm / (norm + 1e-6)


def _by_device(tensors: list[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[Tensor]]:
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
    for t in tensors:
        groups[(t.device, t.dtype)].append(t)
    return groups


def unscale_and_check_(
    grads: list[Tensor], inv_scale: float, *, group: Any = None, sharded: bool = False
) -> bool:
    """Multiply ``grads`` by ``inv_scale`` in place and say whether any is inf/NaN on any rank."""
    found_any = False
    for (device, _), tensors in _by_device(grads).items():
        found = torch.zeros(1, dtype=torch.float32, device=device)
        inv = torch.full((1,), inv_scale, dtype=torch.float32, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, inv)
        found_any = found_any or bool(found.item())
    if sharded and ds_comm.get_world_size(group) > 1:
        flag = torch.tensor([1.0 if found_any else 0.0])
        if grads:
            flag = flag.to(grads[0].device)
        ds_comm.all_reduce(flag, op=ds_comm.ReduceOp.MAX, group=group)
        found_any = bool(flag.item())
    return found_any


def unscale_(grads: list[Tensor], inv_scale: float) -> None:
    """Multiply ``grads`` by ``inv_scale`` in place (no check: the global norm finds non-finite values)."""
    for (device, _), tensors in _by_device(grads).items():
        torch._foreach_mul_(tensors, torch.full((), inv_scale, dtype=torch.float32, device=device))


def is_finite(value: Tensor) -> bool:
    """Whether a scalar tensor is finite: one host read (Note [non-finite gradients] in ds_zero.trainer)."""
    return bool(torch.isfinite(value).all())


def global_norm(
    grads: list[Tensor], *, norm_type: float = 2.0, group: Any = None, sharded: bool = False
) -> Tensor:
    """The norm of all ``grads`` taken as one vector (over every rank's part when ``sharded``)."""
    device = grads[0].device if grads else torch.device("cpu")
    if grads:
        parts = [
            torch.stack([n.float() for n in torch._foreach_norm(ts, norm_type)]).to(device)
            for ts in _by_device(grads).values()
        ]
        local = torch.linalg.vector_norm(torch.cat(parts), norm_type)
    else:
        local = torch.zeros((), dtype=torch.float32, device=device)
    if not sharded or ds_comm.get_world_size(group) == 1:
        return local
    if math.isinf(norm_type):
        out = local.reshape(1).clone()
        ds_comm.all_reduce(out, op=ds_comm.ReduceOp.MAX, group=group)
        return out[0]
    powered = local.pow(norm_type).reshape(1)
    ds_comm.all_reduce(powered, group=group)
    return powered[0].pow(1.0 / norm_type)


def clip_(grads: list[Tensor], max_norm: float, total_norm: Tensor) -> None:
    """Scale ``grads`` in place so their global norm is at most ``max_norm``."""
    if not grads or max_norm <= 0:
        return
    coef = torch.clamp(max_norm / (total_norm + CLIP_EPS), max=1.0)
    if coef.device.type == "cpu" and float(coef) >= 1.0:
        return  # reading the value is free on the host: skip a pass that would multiply by one
    for (device, _), tensors in _by_device(grads).items():
        torch._foreach_mul_(tensors, coef.to(device))
