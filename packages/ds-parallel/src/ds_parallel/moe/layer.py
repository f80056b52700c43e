"""The MoE layer: ``MoE`` (DeepSpeed's ``deepspeed.moe.layer.MoE``), its gate, experts and all-to-all dispatch.

Note: [dispatch layout] Tokens are packed into a ``[e, c, m]`` buffer (expert, capacity slot, model dim).
With expert parallelism each rank of the ``ep_size`` group holds ``e / ep_size`` consecutive experts
(rank ``r`` holds experts ``r * local .. (r + 1) * local - 1``), so an ``all_to_all_single`` over the first
dimension sends the block for those experts to rank ``r``; the received buffer is
``[ep_size (source rank), local experts, c, m]``. Each local expert processes its tokens from every
source; a second all-to-all returns the results, and the combine weights put them back per token.
Both all-to-alls are differentiable (the backward of one is the same all-to-all).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ds_parallel.moe import expert_groups
from ds_parallel.moe.gating import (
    Routes,
    multiplicative_jitter,
    top1_routes,
    top1gating,
    top2gating,
    topkgating,
)
from ds_parallel.moe.utils import expert_param


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` over the first dimension, differentiable (Note [dispatch layout])."""

    @staticmethod
    def forward(ctx: Any, group: Any, inp: Tensor) -> Tensor:  # type: ignore[override]
        ctx.group = group
        inp = inp.contiguous()
        out = torch.empty_like(inp)
        dist.all_to_all_single(out, inp, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, *grad_output: Tensor) -> tuple[None, Tensor]:  # type: ignore[override]
        return None, _AllToAll.apply(ctx.group, *grad_output)


class Experts(nn.Module):
    """``num_local_experts`` copies of ``expert``; their parameters are marked as expert parameters
    (``allreduce = False``, ``group_name``) so the engine reduces them over the expert-data-parallel group."""

    def __init__(
        self, expert: nn.Module, num_local_experts: int = 1, expert_group_name: str | None = None
    ) -> None:
        super().__init__()
        self.deepspeed_experts = nn.ModuleList([copy.deepcopy(expert) for _ in range(num_local_experts)])
        self.num_local_experts = num_local_experts
        for module in self.deepspeed_experts:
            for param in module.parameters():
                expert_param(param).allreduce = False
                expert_param(param).group_name = expert_group_name

    def forward(self, inputs: Tensor) -> Tensor:
        """``inputs`` is ``[ep_size, local experts, c, m]``; expert ``i`` gets ``inputs[:, i]``."""
        outs = []
        for chunk, module in zip(inputs.chunk(self.num_local_experts, dim=1), self.deepspeed_experts):
            out = module(chunk)
            outs.append(out[0] if isinstance(out, tuple) else out)  # a (output, bias) expert: keep the output
        return torch.cat(outs, dim=1)


class TopKGate(nn.Module):
    """Linear router ``wg`` (no bias, computed in fp32) and the top-k gating of :mod:`ds_parallel.moe.gating`."""

    def __init__(
        self,
        model_dim: int,
        num_experts: int,
        k: int = 1,
        capacity_factor: float = 1.0,
        eval_capacity_factor: float = 1.0,
        min_capacity: int = 8,
        noisy_gate_policy: str | None = None,
        drop_tokens: bool = True,
        use_rts: bool = True,
        ep_group: Any = None,
        top2_2nd_expert_sampling: bool = True,
    ) -> None:
        super().__init__()
        if k < 1 or k > num_experts:
            raise ValueError(f"k={k} must be between 1 and num_experts={num_experts}")
        self.wg = nn.Linear(model_dim, num_experts, bias=False)
        self.ep_group = ep_group
        self.k = k
        self.capacity_factor = capacity_factor
        self.eval_capacity_factor = eval_capacity_factor
        self.min_capacity = min_capacity
        self.noisy_gate_policy = noisy_gate_policy
        self.drop_tokens = drop_tokens
        self.use_rts = use_rts
        self.top2_2nd_expert_sampling = top2_2nd_expert_sampling
        self.wall_clock_breakdown = False
        self.gate_time = 0.0

    def _set_ep_group(self, ep_group: Any) -> None:
        if self.ep_group is not None:
            raise RuntimeError("this gate's expert parallel group is already set")
        self.ep_group = ep_group

    def _logits(self, input: Tensor) -> Tensor:
        x = input.float()
        if self.noisy_gate_policy == "Jitter" and self.training:
            x = multiplicative_jitter(x)
        return F.linear(x, self.wg.weight.float())

    def routes(self, input: Tensor, used_token: Tensor | None = None) -> tuple[Tensor, Routes, Tensor, int]:
        """``(l_aux, routes, exp_counts, capacity)``: the kept routes as index lists (what the layer uses;
        top-1 never builds the dense ``[s, e, c]`` weights, which cost more than the dispatch they drive)."""
        if self.k == 1:
            factor = self.capacity_factor if self.training else self.eval_capacity_factor
            return top1_routes(
                self._logits(input),
                factor,
                self.min_capacity,
                used_token,
                self.noisy_gate_policy if self.training else None,
                self.drop_tokens,
                self.use_rts,
                self.ep_group,
            )
        return _dense_routes(*self(input, used_token))

    def forward(
        self, input: Tensor, used_token: Tensor | None = None, use_tutel: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(l_aux, combine_weights, dispatch_mask, exp_counts)`` for ``input`` of shape ``[s, m]``."""
        logits = self._logits(input)
        factor = self.capacity_factor if self.training else self.eval_capacity_factor
        if self.k == 1:
            return top1gating(
                logits,
                factor,
                self.min_capacity,
                used_token,
                self.noisy_gate_policy if self.training else None,
                self.drop_tokens,
                self.use_rts,
                self.ep_group,
            )
        if self.k == 2:
            return top2gating(
                logits,
                factor,
                self.min_capacity,
                self.drop_tokens,
                self.ep_group,
                self.top2_2nd_expert_sampling,
            )
        return topkgating(logits, self.k, factor, self.min_capacity, self.drop_tokens, self.ep_group)


def _dense_routes(
    l_aux: Tensor, combine: Tensor, dispatch_mask: Tensor, exp_counts: Tensor
) -> tuple[Tensor, Routes, Tensor, int]:
    """A gate's dense ``(l_aux, combine, dispatch_mask, exp_counts)`` as routes (its nonzeros)."""
    token, expert, slot = dispatch_mask.nonzero(as_tuple=True)
    return l_aux, Routes(token, expert, slot, combine[token, expert, slot]), exp_counts, combine.shape[2]


class MOELayer(nn.Module):
    """Gate, dispatch (all-to-all over the expert-parallel group), experts, combine."""

    def __init__(
        self,
        gate: TopKGate,
        experts: Experts,
        ep_group_name: str,
        ep_size: int,
        num_local_experts: int,
        use_tutel: bool = False,
    ) -> None:
        super().__init__()
        self.gate = gate
        self.experts = experts
        self.ep_group: Any = None
        self.ep_size = ep_size
        self.ep_group_name = ep_group_name
        self.num_local_experts = num_local_experts
        self.use_tutel = False  # Tutel is CUDA-only; the einsum path is used everywhere
        self.wall_clock_breakdown = False
        self.time_falltoall = self.time_salltoall = self.time_moe = 0.0
        self.l_aux: Tensor | None = None
        self.exp_counts: Tensor | None = None

    def _set_ep_group(self, ep_group: Any) -> None:
        self.ep_group = ep_group
        self.gate._set_ep_group(ep_group)

    def forward(self, *input: Tensor, **kwargs: Any) -> Tensor:
        """``input[0]`` of shape ``[..., m]``; optional ``input[1]``: mask of used tokens."""
        d_model = input[0].shape[-1]
        tokens = input[0].reshape(-1, d_model)
        used = input[1] if len(input) > 1 else None
        # a gate of another class (or one overriding forward) is read through its dense weights
        sparse = isinstance(self.gate, TopKGate) and type(self.gate).forward is TopKGate.forward
        self.l_aux, routes, self.exp_counts, cap = (
            self.gate.routes(tokens, used) if sparse else _dense_routes(*self.gate(tokens, used))
        )
        # Sparse dispatch: each kept route copies one token into its slot (a dense einsum over the one-hot
        # [s, e, c] mask would cost s * e * c * m multiply-adds to move s * k * m numbers).
        num_experts = self.num_local_experts * self.ep_size
        token_idx, expert_idx, slot_idx = routes.token, routes.expert, routes.slot
        flat_slot = expert_idx * cap + slot_idx
        dispatched = tokens.new_zeros(num_experts * cap, d_model).index_copy(0, flat_slot, tokens[token_idx])
        dispatched = dispatched.view(num_experts, cap, d_model)
        if self.ep_size > 1:
            if self.ep_group is None:
                raise RuntimeError(
                    f"MoE layer with ep_size={self.ep_size} has no expert parallel group: build it "
                    "with deepspeed.initialize (or call set_deepspeed_parallelism())"
                )
            dispatched = _AllToAll.apply(self.ep_group, dispatched)
        dispatched = dispatched.reshape(self.ep_size, self.num_local_experts, -1, d_model)
        out = self.experts(dispatched).reshape(self.ep_size * self.num_local_experts, -1, d_model)
        if self.ep_size > 1:
            out = _AllToAll.apply(self.ep_group, out)
        weights = routes.weight.to(out.dtype).unsqueeze(1)
        routed = out.reshape(num_experts * cap, d_model).index_select(0, flat_slot) * weights
        combined = tokens.new_zeros(tokens.shape[0], d_model, dtype=out.dtype).index_add(0, token_idx, routed)
        return combined.reshape(input[0].shape)


class MoE(nn.Module):
    """DeepSpeed's ``MoE`` layer: returns ``(output, l_aux, exp_counts)``.

    ``ep_size`` ranks share the ``num_experts`` experts (``num_experts / ep_size`` each); the process
    groups are made by :meth:`set_deepspeed_parallelism`, which ``deepspeed.initialize`` calls.
    """

    def __init__(
        self,
        hidden_size: int,
        expert: nn.Module,
        num_experts: int = 1,
        ep_size: int = 1,
        k: int = 1,
        capacity_factor: float = 1.0,
        eval_capacity_factor: float = 1.0,
        min_capacity: int = 4,
        use_residual: bool = False,
        noisy_gate_policy: str | None = None,
        drop_tokens: bool = True,
        use_rts: bool = True,
        use_tutel: bool = False,
        enable_expert_tensor_parallelism: bool = False,
        top2_2nd_expert_sampling: bool = True,
    ) -> None:
        super().__init__()
        if num_experts % ep_size:
            raise ValueError(
                f"Number of experts ({num_experts}) should be divisible by expert parallel size ({ep_size})"
            )
        if noisy_gate_policy not in (None, "None", "Jitter", "RSample"):
            raise ValueError(
                f"Unsupported noisy_gate_policy: {noisy_gate_policy!r} (None, 'Jitter' or 'RSample')"
            )
        if enable_expert_tensor_parallelism:
            raise NotImplementedError(
                "enable_expert_tensor_parallelism needs tensor parallelism, not built yet"
            )
        self.use_residual = use_residual
        self.enable_expert_tensor_parallelism = enable_expert_tensor_parallelism
        self.ep_size = ep_size
        self.expert_group_name = expert_groups.group_name(ep_size)
        self.num_experts = num_experts
        self.num_local_experts = num_experts // ep_size
        experts = Experts(expert, self.num_local_experts, self.expert_group_name)
        gate = TopKGate(
            hidden_size,
            num_experts,
            k,
            capacity_factor,
            eval_capacity_factor,
            min_capacity,
            noisy_gate_policy,
            drop_tokens,
            use_rts,
            None,
            top2_2nd_expert_sampling,
        )
        self.deepspeed_moe = MOELayer(
            gate, experts, self.expert_group_name, ep_size, self.num_local_experts, use_tutel=use_tutel
        )
        if use_residual:
            self.mlp = expert
            self.coefficient = nn.Linear(hidden_size, 2)  # mixes the MoE and the dense expert per token

    def set_deepspeed_parallelism(self, use_data_before_expert_parallel_: bool = False) -> None:
        """Create this layer's expert groups (collective, once per ep size) and hand it its group."""
        self._create_process_groups(use_data_before_expert_parallel_=use_data_before_expert_parallel_)

    def _create_process_groups(self, use_data_before_expert_parallel_: bool = False) -> None:
        if self.expert_group_name not in expert_groups._get_expert_parallel_group_dict():
            expert_groups._create_expert_and_data_parallel(
                self.ep_size, use_data_before_expert_parallel_=use_data_before_expert_parallel_
            )
        if self.deepspeed_moe.ep_group is None:
            self.deepspeed_moe._set_ep_group(expert_groups._get_expert_parallel_group(self.expert_group_name))

    def forward(
        self, hidden_states: Tensor, used_token: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(output, l_aux, exp_counts)``."""
        output = (
            self.deepspeed_moe(hidden_states, used_token)
            if used_token is not None
            else self.deepspeed_moe(hidden_states)
        )
        if self.use_residual:
            dense = self.mlp(hidden_states)
            dense = dense[0] if isinstance(dense, tuple) else dense
            coef = F.softmax(self.coefficient(hidden_states), dim=-1)
            output = output * coef[..., 0:1] + dense * coef[..., 1:]
        l_aux, exp_counts = self.deepspeed_moe.l_aux, self.deepspeed_moe.exp_counts
        assert l_aux is not None and exp_counts is not None  # set by the forward that just ran
        return output, l_aux, exp_counts


__all__ = ["Experts", "MOELayer", "MoE", "TopKGate"]
