"""MoE gating maths (capacity, dropping, aux loss, combine weights) and the expert-parallel all-to-all layout."""

from __future__ import annotations

import math

import moe_ranks
import pytest
import torch
import torch.nn.functional as F

from ds_comm.testing import run_distributed
from ds_parallel.moe.gating import capacity, top1gating, top2gating, topkgating
from ds_parallel.moe.layer import MoE


def _logits(s: int, e: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(s, e, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize(
    ("s", "e", "cf", "minc", "want"),
    [(16, 4, 1.0, 0, 4), (16, 4, 0.5, 0, 2), (16, 4, 0.5, 3, 3), (10, 4, 1.0, 0, 3), (10, 3, 1.5, 4, 5)],
)
def test_capacity_formula(s: int, e: int, cf: float, minc: int, want: int) -> None:
    assert capacity(s, e, cf, minc) == want == max(math.ceil(s / e * cf), minc)


@pytest.mark.parametrize("cf", [0.5, 1.0])
def test_top1_drops_beyond_capacity_and_keeps_the_gate(cf: float) -> None:
    logits = _logits(32, 4)
    torch.manual_seed(0)
    l_aux, combine, dispatch, counts = top1gating(logits, cf, 0, drop_tokens=True, use_rts=True)
    gates = F.softmax(logits, dim=1)
    top = gates.argmax(dim=1)
    cap = capacity(32, 4, cf, 0)
    assert combine.shape == (32, 4, cap)
    assert counts.tolist() == torch.bincount(top, minlength=4).tolist()
    kept = dispatch.any(dim=2)  # [s, e]
    for e in range(4):
        assert int(kept[:, e].sum()) == min(int(counts[e]), cap)  # exactly capacity's worth kept per expert
        assert not kept[top != e, e].any()  # never routed anywhere but the top-1 choice
    for t in range(32):
        if kept[t].any():  # one slot, weighted by the token's gate value, slots unique per expert
            assert int(dispatch[t].sum()) == 1
            assert combine[t, top[t]].sum().item() == pytest.approx(gates[t, top[t]].item())
        else:
            assert combine[t].abs().sum() == 0
    for e in range(4):
        assert dispatch[:, e, :].sum(dim=0).le(1).all()
    me, ce = gates.mean(dim=0), F.one_hot(top, 4).float().mean(dim=0)
    assert l_aux.item() == pytest.approx((me * ce).sum().item() * 4)  # Note [aux loss]


def test_top1_without_rts_keeps_by_position_and_no_drop_keeps_everything() -> None:
    logits = _logits(20, 4, seed=1)
    _, _, dispatch, counts = top1gating(logits, 1.0, 0, drop_tokens=False, use_rts=False)
    assert dispatch.shape[2] == int(counts.max())  # capacity = the largest count (Note [capacity])
    assert int(dispatch.sum()) == 20


def _expected_top2_keep(logits: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First choices in token order, then second choices, each expert up to ``cap``: written as loops."""
    s, e = logits.shape
    first = logits.argmax(dim=1)
    second = logits.masked_fill(F.one_hot(first, e).bool(), float("-inf")).argmax(dim=1)
    used = [0] * e
    keep1, keep2 = torch.zeros(s, dtype=torch.bool), torch.zeros(s, dtype=torch.bool)
    for t in range(s):
        if used[first[t]] < cap:
            keep1[t] = True
        used[first[t]] += 1
    for t in range(s):
        if used[second[t]] < cap:
            keep2[t] = True
        used[second[t]] += 1
    return keep1, keep2


@pytest.mark.parametrize("cf", [0.25, 0.5, 1.0])
def test_top2_drops_exactly_the_routes_past_capacity(cf: float) -> None:
    logits = _logits(24, 4, seed=2)
    l_aux, combine, dispatch, counts = top2gating(
        logits.clone(), cf, 0, drop_tokens=True, top2_2nd_expert_sampling=False
    )
    cap = capacity(24, 4, 2 * cf, 0)
    keep1, keep2 = _expected_top2_keep(logits, cap)
    gates = F.softmax(logits, dim=1)
    first = gates.argmax(dim=1)
    second = logits.masked_fill(F.one_hot(first, 4).bool(), float("-inf")).argmax(dim=1)
    routed = dispatch.any(dim=2)
    for t in range(24):
        assert bool(routed[t, first[t]]) == bool(keep1[t])
        assert bool(routed[t, second[t]]) == bool(keep2[t])
        g1 = gates[t, first[t]] * keep1[t]
        g2 = gates[t, second[t]] * keep2[t]
        denom = max(float(g1 + g2), torch.finfo(torch.float32).eps)
        assert combine[t, first[t]].sum().item() == pytest.approx(float(g1) / denom, abs=1e-6)
    me, ce = gates.mean(dim=0), F.one_hot(first, 4).float().mean(dim=0)
    assert l_aux.item() == pytest.approx((me * ce).mean().item() * 16)


def test_topk_probs_policy_keeps_largest_gates_per_expert() -> None:
    logits = _logits(16, 6, seed=3)
    l_aux, combine, dispatch, counts = topkgating(logits, 3, 0.5, 0, drop_tokens=True)
    gates = F.softmax(logits, dim=1)
    cap = capacity(16, 6, 1.5, 0)
    top_idx = gates.topk(3, dim=1).indices
    chosen = torch.zeros_like(gates).scatter(1, top_idx, 1).bool()
    routed = dispatch.any(dim=2)
    assert counts.tolist() == chosen.sum(dim=0).tolist()
    for e in range(6):
        candidates = gates[:, e].masked_fill(~chosen[:, e], -1.0)
        expect = set(candidates.topk(min(cap, int(chosen[:, e].sum()))).indices.tolist())
        assert set(routed[:, e].nonzero().flatten().tolist()) == expect
    me, ce = gates.mean(dim=0), chosen.float().mean(dim=0)
    assert l_aux.item() == pytest.approx((me * ce).mean().item() * 36 / 3)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_layer_without_dropping_equals_the_weighted_experts(k: int) -> None:
    layer = moe_ranks.make_layer(1, 0, k)
    x = moe_ranks.tokens(0)
    out, _, _ = layer(x)
    flat = x.reshape(-1, moe_ranks.HIDDEN)
    gates = F.softmax(flat @ layer.deepspeed_moe.gate.wg.weight.t(), dim=1)
    top = gates.topk(k, dim=1)
    weights = top.values / top.values.sum(dim=1, keepdim=True) if k > 1 else top.values
    experts = layer.deepspeed_moe.experts.deepspeed_experts
    want = torch.stack(
        [
            sum(w * experts[int(i)](flat[t]) for w, i in zip(weights[t], top.indices[t]))
            for t in range(flat.shape[0])
        ]
    )
    torch.testing.assert_close(out.reshape(-1, moe_ranks.HIDDEN), want, rtol=1e-5, atol=1e-5)


def test_residual_moe_mixes_dense_and_experts() -> None:
    layer = moe_ranks.make_layer(1, 0, 1, use_residual=True)
    x = moe_ranks.tokens(0)
    out, _, _ = layer(x)
    moe_out = layer.deepspeed_moe(x)
    coef = F.softmax(layer.coefficient(x), dim=-1)
    torch.testing.assert_close(out, moe_out * coef[..., :1] + layer.mlp(x) * coef[..., 1:])


@pytest.mark.faults
def test_layer_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MoE(8, torch.nn.Linear(8, 8), num_experts=3, ep_size=2)
    with pytest.raises(ValueError, match="noisy_gate_policy"):
        MoE(8, torch.nn.Linear(8, 8), num_experts=2, noisy_gate_policy="Gauss")
    layer = MoE(8, torch.nn.Linear(8, 8), num_experts=2, ep_size=2)
    with pytest.raises(RuntimeError, match="expert parallel group"):
        layer(torch.randn(8, 8))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("k", [1, 2])
def test_all_to_all_layout_matches_all_experts_on_one_rank(k: int) -> None:
    """ep=2 on 2 ranks: each rank's outputs, aux loss, counts and input gradients equal one layer holding
    all 4 experts on that rank's tokens; each rank's expert gradients sum both ranks' contributions."""
    results = run_distributed(moe_ranks.ep_layer_outputs, world_size=2, timeout=100, args=(k,))
    ref = moe_ranks.make_layer(1, 0, k)
    expert_grads = None
    for rank, res in enumerate(results):
        assert res["ep_ranks"] == [0, 1] and res["edp_ranks"] == [rank]
        ref.zero_grad()
        x = moe_ranks.tokens(rank).requires_grad_(True)
        out, l_aux, counts = ref(x)
        (out.square().sum() + l_aux).backward()
        torch.testing.assert_close(res["out"], out.detach(), rtol=1e-5, atol=1e-5)
        assert res["l_aux"] == pytest.approx(l_aux.item(), abs=1e-6)
        assert res["counts"] == counts.tolist()
        torch.testing.assert_close(res["x_grad"], x.grad, rtol=1e-5, atol=1e-5)
        grads = [e.weight.grad.clone() for e in ref.deepspeed_moe.experts.deepspeed_experts]
        expert_grads = grads if expert_grads is None else [a + b for a, b in zip(expert_grads, grads)]
    for rank, res in enumerate(results):
        for i, g in enumerate(res["expert_grads"]):
            torch.testing.assert_close(g, expert_grads[rank * 2 + i], rtol=1e-5, atol=1e-5)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("data_first", "ep", "edp"),
    [(False, [[0, 1], [2, 3]], [[0, 2], [1, 3]]), (True, [[0, 2], [1, 3]], [[0, 1], [2, 3]])],
)
def test_expert_group_layout_on_4_ranks(data_first: bool, ep: list, edp: list) -> None:
    for rank, out in enumerate(
        run_distributed(moe_ranks.group_layout, world_size=4, timeout=100, args=(2, data_first))
    ):
        my_ep = next(g for g in ep if rank in g)
        my_edp = next(g for g in edp if rank in g)
        assert out["ep"] == my_ep and out["edp"] == my_edp and out["ep_rank"] == my_ep.index(rank)
        assert out["sum:ep"] == sum(my_ep) and out["sum:edp"] == sum(my_edp) and out["edp_size"] == 2
