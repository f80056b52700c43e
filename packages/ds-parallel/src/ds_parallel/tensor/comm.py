"""The two tensor-parallel collectives, as autograd functions over a plain process group.

Note: [why not DTensor] torch's ``parallelize_module`` with ``ColwiseParallel``/``RowwiseParallel`` works on
gloo/CPU (checked: forward and backward on 2 gloo ranks), but it turns the weights into DTensors. ZeRO 1/2 here flattens every trainable parameter into one contiguous buffer per
bucket (ds_zero.units) and re-points ``param.data`` into it, which a DTensor parameter does not survive
(its ``_local_tensor`` is not ``.data``), and the HF Trainer, ``state_dict`` consumers and optimizers built
before ``deepspeed.initialize`` expect ordinary tensors. So the shards are ordinary tensors holding the
local slice, and the only tensor-parallel mechanism is the pair of collectives below (Megatron's
"copy to" and "reduce from" the tensor-parallel region): one all-reduce per row-parallel layer forward,
one per column-parallel input in backward, which is exactly the communication ``RowwiseParallel`` and
``ColwiseParallel`` issue for replicated inputs/outputs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def _all_reduce(t: Tensor, group: Any) -> Tensor:
    if dist.get_world_size(group) > 1:
        t = t.contiguous()
        dist.all_reduce(t, group=group)
    return t


class _CopyToRegion(torch.autograd.Function):
    """Identity forward; all-reduce of the input gradient in backward (each rank saw part of the output)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:  # noqa: D102
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return _all_reduce(grad.clone(), ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    """All-reduce forward (sum of partial products); identity backward (the output is replicated)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:  # noqa: D102
        return _all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad, None


def copy_to_tensor_region(x: Tensor, group: Any) -> Tensor:
    """``x`` unchanged; its gradient is summed over ``group`` (input of a column-parallel layer)."""
    return _CopyToRegion.apply(x, group)


def reduce_from_tensor_region(x: Tensor, group: Any) -> Tensor:
    """``x`` summed over ``group`` (output of a row-parallel layer); gradient passes through."""
    return _ReduceFromRegion.apply(x, group)
