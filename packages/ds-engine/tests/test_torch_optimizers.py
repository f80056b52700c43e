"""The torch fallbacks for Lamb and Lion against their update rules, computed by hand."""

from __future__ import annotations

import math

import torch

from ds_engine.torch_optimizers import Lamb, Lion


def test_lamb_two_steps_by_hand() -> None:
    w0 = torch.tensor([1.0, -2.0, 0.5])
    grads = [torch.tensor([0.1, 0.2, -0.3]), torch.tensor([-0.05, 0.4, 0.1])]
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    p = torch.nn.Parameter(w0.clone())
    opt = Lamb([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    w, m, v = w0.clone(), torch.zeros(3), torch.zeros(3)
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        update = m / (v.sqrt() + eps) + wd * w
        coeff = min(max(w.norm().item() / update.norm().item(), 0.01), 10.0)
        step = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        w = w - step * coeff * update
        torch.testing.assert_close(p.detach(), w, rtol=1e-6, atol=1e-7)


def test_lion_by_hand() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    p.grad = torch.tensor([0.3, -0.2])
    opt.step()
    # m = 0: direction = sign(0.1 * g); w = w * (1 - lr * wd) - lr * sign
    torch.testing.assert_close(p.detach(), torch.tensor([1.0 * 0.95 - 0.1, -1.0 * 0.95 + 0.1]))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.003, -0.002]))
