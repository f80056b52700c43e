"""Unscale + overflow check, global norm and clipping agree with torch's own utilities."""

from __future__ import annotations

import math

import torch

from ds_zero.grad_math import clip_, global_norm, unscale_and_check_


def _grads(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(5, 3, generator=gen),
        torch.randn(7, generator=gen),
        torch.randn(2, 2, 2, generator=gen),
    ]


def test_unscale_multiplies_and_reports_no_overflow() -> None:
    grads = _grads()
    expected = [g * 0.25 for g in grads]
    assert unscale_and_check_(grads, 0.25) is False
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_unscale_reports_inf_and_nan() -> None:
    for bad in (math.inf, -math.inf, math.nan):
        grads = _grads()
        grads[1][3] = bad
        assert unscale_and_check_(grads, 1.0) is True


def test_global_norm_matches_torch() -> None:
    grads = _grads(1)
    want = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
    torch.testing.assert_close(global_norm(grads), want)
    inf_want = max(g.abs().max() for g in grads)
    torch.testing.assert_close(global_norm(grads, norm_type=math.inf), inf_want)


def test_clip_matches_clip_grad_norm() -> None:
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in _grads(2)]
    for p, g in zip(params, _grads(2)):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(params, 0.5)
    grads = _grads(2)
    clip_(grads, 0.5, global_norm(grads))
    for p, g in zip(params, grads):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-7)


def test_clip_leaves_small_gradients_alone() -> None:
    grads = _grads(3)
    before = [g.clone() for g in grads]
    clip_(grads, 1e6, global_norm(grads))
    for got, want in zip(grads, before):
        assert torch.equal(got, want)
