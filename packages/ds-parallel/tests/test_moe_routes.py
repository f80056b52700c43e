"""Top-1 routes (the layer's sparse form of the gate) against the dense combine weights of ``top1gating``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ds_parallel.moe.gating import top1_routes, top1gating
from ds_parallel.moe.layer import MoE

HIDDEN, EXPERTS, TOKENS = 8, 4, 40


@pytest.mark.parametrize(
    ("drop", "rts", "noisy"), [(True, True, None), (True, False, "RSample"), (False, False, None)]
)
def test_routes_are_the_nonzeros_of_the_dense_combine(drop: bool, rts: bool, noisy: str | None) -> None:
    logits = torch.randn(TOKENS, EXPERTS, generator=torch.Generator().manual_seed(3)) * 2
    used = (torch.arange(TOKENS) % 7 != 0).float()  # some tokens masked out
    torch.manual_seed(1)
    l_dense, combine, dispatch, counts_dense = top1gating(logits, 0.5, 0, used, noisy, drop, rts)
    torch.manual_seed(1)  # the same noise and random priorities
    l_aux, routes, counts, cap = top1_routes(logits, 0.5, 0, used, noisy, drop, rts)
    assert cap == combine.shape[2]
    assert torch.equal(l_aux, l_dense) and torch.equal(counts, counts_dense)
    token, expert, slot = dispatch.nonzero(as_tuple=True)
    assert (
        torch.equal(routes.token, token)
        and torch.equal(routes.expert, expert)
        and torch.equal(routes.slot, slot)
    )
    assert torch.equal(routes.weight, combine[token, expert, slot])


def test_layer_with_dropping_equals_the_dense_einsum() -> None:
    """The layer's output and gradients equal DeepSpeed's dense formulation (einsums over the [s, e, c]
    dispatch mask and combine weights) when tokens are dropped."""
    torch.manual_seed(0)
    layer = MoE(
        hidden_size=HIDDEN,
        expert=torch.nn.Linear(HIDDEN, HIDDEN),
        num_experts=EXPERTS,
        ep_size=1,
        k=1,
        capacity_factor=0.5,
        min_capacity=0,
        use_rts=True,
    )
    x = torch.randn(TOKENS, HIDDEN, generator=torch.Generator().manual_seed(4), requires_grad=True)
    torch.manual_seed(2)
    out, l_aux, _ = layer(x)
    (out.square().sum() + l_aux).backward()
    got_x, got_wg = x.grad.clone(), layer.deepspeed_moe.gate.wg.weight.grad.clone()
    x.grad, layer.deepspeed_moe.gate.wg.weight.grad = None, None

    torch.manual_seed(2)
    gate, experts = layer.deepspeed_moe.gate, layer.deepspeed_moe.experts.deepspeed_experts
    l_ref, combine, dispatch, _ = top1gating(x @ gate.wg.weight.t(), 0.5, 0, None, None, True, True)
    dispatched = torch.einsum("sec,sm->ecm", dispatch.to(x.dtype), x)
    expert_out = torch.stack([experts[e](dispatched[e]) for e in range(EXPERTS)])
    want = torch.einsum("sec,ecm->sm", combine, expert_out)
    assert int(dispatch.sum()) < TOKENS  # capacity 0.5: tokens were dropped
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    (want.square().sum() + l_ref).backward()
    torch.testing.assert_close(got_x, x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_wg, gate.wg.weight.grad, rtol=1e-5, atol=1e-6)
    assert F.mse_loss(got_x, torch.zeros_like(got_x)) > 0
