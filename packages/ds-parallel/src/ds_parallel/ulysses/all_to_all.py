"""The Ulysses all-to-all: sequence shards <-> head shards, differentiable, on ``all_to_all_single``.

Note: [all-to-all layout] ``seq_all_to_all(x, group, scatter_dim, gather_dim)`` splits ``x`` into ``p``
equal chunks along ``scatter_dim`` (chunk ``i`` goes to group rank ``i``) and concatenates what arrives
along ``gather_dim`` in group-rank order. Called with ``scatter_dim`` = heads and ``gather_dim`` =
sequence on a rank's sequence shard it yields the whole sequence for ``1/p`` of the heads; the
reverse call (scatter sequence, gather heads) undoes it exactly. The backward of one direction is the
other direction, so gradients need no extra collective.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def _exchange(x: torch.Tensor, group: Any, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    p = dist.get_world_size(group)
    if p == 1:
        return x
    if x.shape[scatter_dim] % p:
        raise ValueError(
            f"all-to-all: dimension {scatter_dim} of size {x.shape[scatter_dim]} does not split "
            f"over {p} ranks"
        )
    # [p, ...chunk] contiguous, so all_to_all_single's dim-0 split sends chunk i to rank i.
    send = torch.stack(torch.tensor_split(x, p, dim=scatter_dim)).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=gather_dim)


class _SeqAllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, group: Any, x: torch.Tensor, scatter_dim: int, gather_dim: int) -> torch.Tensor:
        ctx.group, ctx.scatter_dim, ctx.gather_dim = group, scatter_dim, gather_dim
        return _exchange(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None, None]:
        return None, _exchange(grad.contiguous(), ctx.group, ctx.gather_dim, ctx.scatter_dim), None, None


def seq_all_to_all(x: torch.Tensor, group: Any, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Differentiable all-to-all (Note [all-to-all layout]); negative dims count from the end."""
    return _SeqAllToAll.apply(group, x, scatter_dim % x.dim(), gather_dim % x.dim())
