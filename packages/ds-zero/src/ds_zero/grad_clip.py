"""DeepSpeed's ``deepspeed.runtime.utils.clip_grad_norm_`` and ``get_global_norm`` (Megatron-style code
calls them on its own parameters, outside the engine's step)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

import ds_comm

CLIP_EPS = 1e-6  # coef = max_norm / (norm + 1e-6), as torch and DeepSpeed


def get_global_norm(norm_list: Iterable[float]) -> float:
    """The 2-norm of several norms taken together: ``sqrt(sum(n ** 2))``."""
    return math.sqrt(sum(float(n) ** 2 for n in norm_list))


def _is_model_parallel(p: Tensor) -> bool:
    return bool(getattr(p, "model_parallel", False) or getattr(p, "tensor_model_parallel", False))


def _all_reduce(t: Tensor, op: Any, group: Any) -> None:
    if torch.distributed.is_initialized() and ds_comm.get_world_size(group) > 1:
        ds_comm.all_reduce(t, op=op, group=group)


def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor], max_norm: float, norm_type: float = 2, mpu: Any = None
) -> Tensor:
    """Scale the gradients of ``parameters`` in place so their joint ``norm_type``-norm is at most
    ``max_norm``, and return that norm (before clipping).

    With ``mpu`` (Megatron's model-parallel unit), the norm spans the model-parallel group: partitioned
    (``model_parallel``) parameters count on every rank, replicated ones once (on model-parallel rank 0).
    The norm is then averaged over the data-parallel group (the world without ``mpu``), which changes
    nothing where replicas agree and makes every rank clip alike where they do not (expert parameters).
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    with_grad = [(p, p.grad) for p in params if p.grad is not None]
    grads = [g for _, g in with_grad]
    norm_type = float(norm_type)
    device = grads[0].device if grads else torch.device("cpu")
    mp_group = mpu.get_model_parallel_group() if mpu is not None else None
    counted = [
        g for p, g in with_grad if mpu is None or mpu.get_model_parallel_rank() == 0 or _is_model_parallel(p)
    ]
    if math.isinf(norm_type):
        local = [g.detach().abs().max().float() for g in grads]
        total = torch.stack(local).max() if local else torch.zeros((), device=device)
        total = total.reshape(1)
        if mpu is not None:
            _all_reduce(total, ds_comm.ReduceOp.MAX, mp_group)
    else:
        norms = [g.detach().float().norm(norm_type) for g in counted]
        total = (
            torch.stack(norms).pow(norm_type).sum() if norms else torch.zeros((), device=device)
        ).reshape(1)
        if mpu is not None:
            _all_reduce(total, ds_comm.ReduceOp.SUM, mp_group)
        total = total.pow(1.0 / norm_type)
    dp_group = mpu.get_data_parallel_group() if mpu is not None else None
    if torch.distributed.is_initialized():
        world = ds_comm.get_world_size(dp_group)
        if world > 1:
            total = total / world
            _all_reduce(total, ds_comm.ReduceOp.SUM, dp_group)
    coef = torch.clamp(max_norm / (total + CLIP_EPS), max=1.0)
    for g in grads:
        g.detach().mul_(coef.to(g.device))
    return total[0]
