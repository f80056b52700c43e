"""The sequence-parallel loss: per-shard mean losses combined into the whole sequence's mean.

Note: [sp loss] Each rank of a sequence-parallel group computes the mean loss of its shard's valid
tokens. The all-gather is differentiable (its backward sums the gradients of every rank's copy), so
after ``loss = sum(loss_r * n_r) / sum(n_r)`` every rank holds the whole sequence's loss and its shard's
gradient is ``sp`` times its share. Averaging gradients over the sequence+data group (``sp * dp`` ranks,
what the engine and ZeRO do) therefore yields exactly the data-parallel mean of the whole-sequence
gradients: the run equals one without sequence parallelism on the same global batch. This is the
aggregation of the ALST tutorial and of HF Trainer's ``deepspeed_sp_compute_loss``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ds_parallel.ulysses.dataloader import IGNORE_INDEX


class _AllGatherStack(torch.autograd.Function):
    """Differentiable all-gather of one tensor per rank, stacked in group-rank order.

    torch.distributed.nn's all_gather backward emulates reduce-scatter on gloo with scatters whose
    source rank is taken as a global rank, which fails in a subgroup; the gradient here is an
    all-reduce of the stacked gradients (every rank's copy of the result contributes), then this
    rank's row."""

    @staticmethod
    def forward(ctx, group, x):  # type: ignore[no-untyped-def]
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return None, grad[dist.get_rank(ctx.group)]


def all_gather_stack(x: torch.Tensor, group: Any) -> torch.Tensor:
    """``x`` of every rank of ``group``, stacked (differentiable: gradients sum over the ranks' copies)."""
    return _AllGatherStack.apply(group, x)


def sequence_parallel_loss(loss: torch.Tensor, shift_labels: torch.Tensor, group: Any) -> torch.Tensor:
    """The whole sequence's mean loss from this shard's mean ``loss`` (Note [sp loss])."""
    valid = (shift_labels != IGNORE_INDEX).sum().to(loss.dtype)
    losses = all_gather_stack(loss, group)
    counts = all_gather_stack(valid.detach(), group)
    # A shard with no valid token has a NaN mean: it contributes nothing.
    losses = torch.where(counts > 0, losses, torch.zeros_like(losses))
    return (losses * counts).sum() / counts.sum().clamp(min=1)
