"""DeepSpeed's ``clip_grad_norm_`` / ``get_global_norm`` against torch's clipping."""

from __future__ import annotations

import math

import pytest
import torch

from ds_zero.grad_clip import clip_grad_norm_, get_global_norm


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=gen)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 4
    params.append(torch.nn.Parameter(torch.ones(2)))  # no gradient: ignored
    return params


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_matches_torch(norm_type):
    ours, ref = _params(), _params()
    total = clip_grad_norm_(ours, max_norm=1.0, norm_type=norm_type)
    want = torch.nn.utils.clip_grad_norm_([p for p in ref if p.grad is not None], 1.0, norm_type=norm_type)
    torch.testing.assert_close(total, want)
    for a, b in zip(ours[:3], ref[:3]):
        torch.testing.assert_close(a.grad, b.grad)


def test_a_small_norm_is_not_scaled():
    params = _params()
    before = [p.grad.clone() for p in params[:3]]
    clip_grad_norm_(params, max_norm=1e6)
    assert all(torch.equal(p.grad, b) for p, b in zip(params[:3], before))


def test_get_global_norm():
    assert get_global_norm([3.0, 4.0]) == 5.0
    assert math.isclose(get_global_norm([torch.tensor(1.0), 1.0]), math.sqrt(2))
