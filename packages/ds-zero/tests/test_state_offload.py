"""``offload_states`` / ``reload_states`` on a trainer made by ``ds_zero.wrap``, in one process."""

from __future__ import annotations

import torch

from ds_zero import ZeroPolicy, wrap


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def test_gradients_dropped_while_offloaded_stay_dropped_at_reload() -> None:
    """Gradients offloaded mid-accumulation and then dropped (``zero_grad``) have nothing to come back
    to: reload leaves them None (it used to fail copying None back), and training goes on."""
    model = _model()
    trainer = wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), policy=ZeroPolicy())
    x, y = torch.randn(4, 6), torch.randn(4, 3)
    trainer.backward(torch.nn.functional.mse_loss(model(x), y))
    assert all(p.grad is not None for p in model.parameters())
    trainer.offload_states(include=["lp_grads"])
    trainer.zero_grad(set_to_none=True)
    trainer.reload_states()
    assert all(p.grad is None for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    trainer.backward(torch.nn.functional.mse_loss(model(x), y))
    assert trainer.step() is True
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
