"""Rank functions of the MoE multi-rank tests (importable by spawned ranks)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

HIDDEN, EXPERTS, TOKENS = 8, 4, 12


def make_layer(ep_size: int, ep_rank: int, k: int, use_residual: bool = False) -> nn.Module:
    """An MoE layer whose experts are distinct (seeded by global index) and whose gate is seeded alike."""
    from ds_parallel.moe.layer import MoE

    torch.manual_seed(0)
    layer = MoE(
        HIDDEN,
        nn.Linear(HIDDEN, HIDDEN),
        num_experts=EXPERTS,
        ep_size=ep_size,
        k=k,
        drop_tokens=False,
        use_rts=False,
        min_capacity=0,
        top2_2nd_expert_sampling=False,
        use_residual=use_residual,
    )
    local = EXPERTS // ep_size
    for i, expert in enumerate(layer.deepspeed_moe.experts.deepspeed_experts):
        g = torch.Generator().manual_seed(10 + ep_rank * local + i)
        with torch.no_grad():
            expert.weight.copy_(torch.randn(expert.weight.shape, generator=g))
            expert.bias.copy_(torch.randn(expert.bias.shape, generator=g))
    return layer


def tokens(rank: int) -> torch.Tensor:
    """This rank's tokens (``[2, TOKENS / 2, HIDDEN]``: the layer flattens leading dimensions)."""
    return torch.randn(2, TOKENS // 2, HIDDEN, generator=torch.Generator().manual_seed(100 + rank))


def ep_layer_outputs(k: int) -> dict[str, Any]:
    """Forward and backward of an ep=world MoE layer on this rank's tokens."""
    from ds_parallel.moe import expert_groups

    rank, world = dist.get_rank(), dist.get_world_size()
    layer = make_layer(world, rank, k)
    layer.set_deepspeed_parallelism()
    x = tokens(rank).requires_grad_(True)
    out, l_aux, counts = layer(x)
    (out.square().sum() + l_aux).backward()
    return {
        "out": out.detach(),
        "l_aux": l_aux.item(),
        "counts": counts.tolist(),
        "x_grad": x.grad,
        "expert_grads": [e.weight.grad for e in layer.deepspeed_moe.experts.deepspeed_experts],
        "ep_ranks": expert_groups._get_expert_parallel_group_ranks(layer.expert_group_name),
        "edp_ranks": expert_groups._get_expert_data_parallel_group_ranks(layer.expert_group_name),
    }


def group_layout(ep_size: int, data_first: bool) -> dict[str, Any]:
    """The expert groups this rank is in, and what an all-reduce of global ranks sums to over each."""
    from ds_parallel import groups

    groups._create_expert_and_data_parallel(ep_size, use_data_before_expert_parallel_=data_first)
    name = f"ep_size_{ep_size}"
    out: dict[str, Any] = {
        "ep": list(groups._get_expert_parallel_group_ranks(name)),
        "edp": list(groups._get_expert_data_parallel_group_ranks(name)),
        "ep_rank": groups._get_expert_parallel_rank(name),
        "edp_size": groups._get_expert_data_parallel_world_size(name),
    }
    for key, group in (
        ("ep", groups._get_expert_parallel_group(name)),
        ("edp", groups._get_expert_data_parallel_group(name)),
    ):
        t = torch.tensor([float(dist.get_rank())])
        dist.all_reduce(t, group=group)
        out[f"sum:{key}"] = t.item()
    return out
