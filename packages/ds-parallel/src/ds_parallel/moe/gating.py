"""Token routing for mixture-of-experts layers: top-1, top-2 and top-k gating with expert capacity.

Every gate returns ``(l_aux, combine_weights, dispatch_mask, exp_counts)`` over ``s`` tokens, ``e``
experts and capacity ``c``: ``combine_weights[s, e, c]`` is the weight token ``s`` gets from slot ``c`` of
expert ``e`` (zero where the token was not routed there or was dropped), ``dispatch_mask`` is its
boolean support and ``exp_counts[e]`` counts the routes chosen *before* capacity was applied.

Note: [capacity] (DeepSpeed's rule) ``capacity = max(ceil(s / e * capacity_factor), min_capacity)``;
top-2 uses ``2 * capacity_factor`` and top-k ``k * capacity_factor``. Without dropping the capacity is
the largest per-expert count, made equal on every rank of the expert-parallel group (the all-to-all
needs one shape), so no token is lost.

Note: [aux loss] The load-balancing loss is ``e * sum_e(mean_s gates[s, e] * mean_s mask1[s, e])``
for top-1; top-2 computes ``e * e * mean_e(...)`` (the same value); top-k divides that by ``k``. ``mask1``
is the top-1 choice before capacity, so the loss does not depend on which tokens were dropped.

Note: [which tokens are kept] Top-1 keeps, per expert, the ``capacity`` tokens with the largest random
priority when random token selection (``use_rts``) is on, else the highest-priority-by-position ones
(``topk`` over the 0/1 mask keeps the earliest on ties). Top-2 keeps the first ``capacity`` routes per
expert in token order, first choices before second choices. Top-k (``drop_policy='probs'``) keeps the
``capacity`` routes of largest gate value per expert.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def capacity(num_tokens: int, num_experts: int, capacity_factor: float, min_capacity: int) -> int:
    """Slots per expert (Note [capacity])."""
    return max(int(math.ceil(num_tokens / num_experts * capacity_factor)), int(min_capacity))


def multiplicative_jitter(x: Tensor, epsilon: float = 1e-2) -> Tensor:
    """``x`` times uniform noise in ``[1 - epsilon, 1 + epsilon]`` (the 'Jitter' noisy gate policy)."""
    if epsilon == 0:
        return x
    return x * torch.empty_like(x).uniform_(1.0 - epsilon, 1.0 + epsilon)


def gumbel_rsample(shape: tuple[int, ...], device: torch.device) -> Tensor:
    """Standard Gumbel noise ('RSample' policy and top-2's second-expert sampling)."""
    u = torch.rand(shape, device=device).clamp_(min=1e-20, max=1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def _no_drop_capacity(exp_counts: Tensor, ep_group: Any) -> int:
    """The capacity that drops nothing: the largest count, maximised over the expert-parallel group."""
    top = exp_counts.max().to(torch.int64).reshape(1)
    if ep_group is not None and dist.is_initialized() and dist.get_world_size(ep_group) > 1:
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=ep_group)
    return max(int(top.item()), 1)


def _combine(gates_se: Tensor, mask_se: Tensor, locations_se: Tensor, cap: int) -> Tensor:
    """``[s, e, c]`` weights: each kept route's gate placed at its slot."""
    slots = F.one_hot((locations_se * mask_se).clamp(min=0).long(), cap).to(gates_se.dtype)
    return (gates_se * mask_se).unsqueeze(-1) * slots


class Routes(NamedTuple):
    """The kept routes of a gate, one entry each: token ``token[i]`` goes to slot ``slot[i]`` of expert
    ``expert[i]`` and gets ``weight[i]`` of its output (the nonzeros of the dense combine weights)."""

    token: Tensor
    expert: Tensor
    slot: Tensor
    weight: Tensor


def dense_combine(routes: Routes, num_tokens: int, num_experts: int, cap: int) -> Tensor:
    """The ``[s, e, c]`` combine weights of ``routes`` (differentiable in their weights)."""
    zeros = routes.weight.new_zeros(num_tokens, num_experts, cap)
    return zeros.index_put((routes.token, routes.expert, routes.slot), routes.weight)


def top1_routes(
    logits: Tensor,
    capacity_factor: float,
    min_capacity: int,
    used_token: Tensor | None = None,
    noisy_gate_policy: str | None = None,
    drop_tokens: bool = True,
    use_rts: bool = True,
    ep_group: Any = None,
) -> tuple[Tensor, Routes, Tensor, int]:
    """Top-1 gating as ``(l_aux, routes, exp_counts, capacity)``, without the dense ``[s, e, c]`` tensors
    (Notes [capacity], [aux loss], [which tokens are kept]); :func:`top1gating` is its dense form."""
    gates = F.softmax(logits, dim=1)
    num_tokens, num_experts = gates.shape
    chooser = (
        logits + gumbel_rsample(logits.shape, logits.device) if noisy_gate_policy == "RSample" else gates
    )
    choice = chooser.argmax(dim=1)
    mask1 = F.one_hot(choice, num_experts)
    if used_token is not None:
        mask1 = mask1 * used_token.reshape(-1, 1).to(mask1.dtype)
    exp_counts = mask1.sum(dim=0).detach()
    if drop_tokens:
        cap = capacity(num_tokens, num_experts, capacity_factor, min_capacity)
        if num_tokens < min_capacity:
            raise ValueError(
                f"{num_tokens} tokens is fewer than min_capacity {min_capacity}: set min_capacity "
                "lower or give the layer more tokens"
            )
    else:
        cap = _no_drop_capacity(exp_counts, ep_group)
    l_aux = (gates.mean(dim=0) * mask1.float().mean(dim=0)).sum() * num_experts
    priority = mask1 * torch.rand(mask1.shape, device=logits.device) if use_rts else mask1
    keep = torch.topk(priority, k=min(cap, num_tokens), dim=0).indices
    mask1 = mask1 * torch.zeros_like(mask1).scatter_(0, keep, 1)
    locations = torch.cumsum(mask1, dim=0) - 1
    token = mask1.sum(dim=1).nonzero().squeeze(1)  # at most one route per token: token order is route order
    expert = choice.index_select(0, token)
    return l_aux, Routes(token, expert, locations[token, expert], gates[token, expert]), exp_counts, cap


def top1gating(
    logits: Tensor,
    capacity_factor: float,
    min_capacity: int,
    used_token: Tensor | None = None,
    noisy_gate_policy: str | None = None,
    drop_tokens: bool = True,
    use_rts: bool = True,
    ep_group: Any = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-1 gating (Notes [capacity], [aux loss], [which tokens are kept])."""
    l_aux, routes, exp_counts, cap = top1_routes(
        logits, capacity_factor, min_capacity, used_token, noisy_gate_policy, drop_tokens, use_rts, ep_group
    )
    combine = dense_combine(routes, logits.shape[0], logits.shape[1], cap)
    return l_aux, combine, combine.bool(), exp_counts


def top2gating(
    logits: Tensor,
    capacity_factor: float,
    min_capacity: int,
    drop_tokens: bool = True,
    ep_group: Any = None,
    top2_2nd_expert_sampling: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-2 gating; the second expert is sampled with Gumbel noise when ``top2_2nd_expert_sampling``."""
    gates = F.softmax(logits, dim=1)
    num_tokens, num_experts = gates.shape
    mask1 = F.one_hot(gates.argmax(dim=1), num_experts)
    second = logits + gumbel_rsample(logits.shape, logits.device) if top2_2nd_expert_sampling else logits
    mask2 = F.one_hot(second.masked_fill(mask1.bool(), float("-inf")).argmax(dim=1), num_experts)
    loc1 = torch.cumsum(mask1, dim=0) - 1
    loc2 = (
        torch.cumsum(mask2, dim=0) - 1 + mask1.sum(dim=0, keepdim=True)
    )  # second choices queue after firsts
    l_aux = (gates.mean(dim=0) * mask1.float().mean(dim=0)).mean() * num_experts * num_experts
    exp_counts = (mask1 + mask2).sum(dim=0).detach()
    if drop_tokens:
        cap = capacity(num_tokens, num_experts, 2 * capacity_factor, min_capacity)
        mask1 = mask1 * (loc1 < cap)
        mask2 = mask2 * (loc2 < cap)
    else:
        cap = _no_drop_capacity(exp_counts, ep_group)
    g1 = (gates * mask1).sum(dim=1)
    g2 = (gates * mask2).sum(dim=1)
    denom = (g1 + g2).clamp(min=torch.finfo(gates.dtype).eps)
    combine = _combine((g1 / denom).unsqueeze(1).expand_as(gates), mask1, loc1, cap) + _combine(
        (g2 / denom).unsqueeze(1).expand_as(gates), mask2, loc2, cap
    )
    return l_aux, combine, combine.bool(), exp_counts


def topkgating(
    logits: Tensor,
    k: int,
    capacity_factor: float,
    min_capacity: int,
    drop_tokens: bool = True,
    ep_group: Any = None,
    drop_policy: str = "probs",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k gating (k > 2); ``drop_policy`` ``'probs'`` keeps the largest gates, ``'position'`` the first."""
    gates = F.softmax(logits, dim=1)
    num_tokens, num_experts = gates.shape
    top_gate, top_idx = torch.topk(gates, k=k, dim=1)
    mask = torch.zeros_like(gates, dtype=torch.long).scatter_(1, top_idx, 1)
    exp_counts = mask.sum(dim=0).detach()
    l_aux = (gates.mean(dim=0) * mask.float().mean(dim=0)).mean() * num_experts * num_experts / k
    if drop_tokens:
        cap = capacity(num_tokens, num_experts, k * capacity_factor, min_capacity)
        if drop_policy == "probs":
            chosen = torch.zeros_like(gates).scatter(1, top_idx, top_gate)
            keep = torch.topk(chosen, k=min(cap, num_tokens), dim=0).indices
            mask = mask * torch.zeros_like(mask).scatter_(0, keep, 1)
        elif drop_policy == "position":
            mask = mask * ((torch.cumsum(mask, dim=0) - 1) < cap)
        else:
            raise ValueError(f"drop_policy must be 'probs' or 'position', got {drop_policy!r}")
    else:
        cap = _no_drop_capacity(exp_counts, ep_group)
    locations = torch.cumsum(mask, dim=0) - 1
    masked = gates * mask
    masked = masked / masked.sum(dim=1, keepdim=True).clamp(min=torch.finfo(gates.dtype).eps)
    combine = _combine(masked, mask, locations, cap)
    return l_aux, combine, combine.bool(), exp_counts


__all__ = [
    "Routes",
    "capacity",
    "dense_combine",
    "gumbel_rsample",
    "multiplicative_jitter",
    "top1_routes",
    "top1gating",
    "top2gating",
    "topkgating",
]
