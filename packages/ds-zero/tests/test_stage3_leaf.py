"""ZeRO-3 leaf modules: a mixture-of-experts block whose ranks run different experts.

Each rank's tokens go to a different pair of experts (the route is read off the input, so it is
fixed), as happens in real MoE training. With the block flagged as a leaf it is one shard unit: every
rank gathers and reduces the same thing, and 6 steps on 2 ranks equal single-process PyTorch to 1e-5.
Without the flag each expert is a unit of its own, the ranks' gathers no longer pair up, and the
agreement check stops them with an error naming the experts (where plain FSDP would hang).
"""

from __future__ import annotations

import pytest
import torch
from _stage3_models import make_optimizer, stage3_policy
from torch import nn

import ds_comm
from ds_comm.testing import DistributedTestError, run_distributed

EXPERTS, WIDTH, STEPS, MICRO = 4, 8, 6, 4


class Expert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(WIDTH, 32), nn.Linear(32, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


class MoE(nn.Module):
    """Top-1 routing; the expert is the argmax of the token's first EXPERTS features, and the gate
    (a learned router) scales its output."""

    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(WIDTH, EXPERTS)
        self.experts = nn.ModuleList(Expert() for _ in range(EXPERTS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = x[:, :EXPERTS].argmax(-1)
        gate = torch.softmax(self.router(x), -1).gather(1, choice[:, None])
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            picked = choice == i
            if picked.any():
                out = out.index_put((picked.nonzero()[:, 0],), expert(x[picked]))
        return x + gate * out


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(MoE(), nn.Linear(WIDTH, 3))


def batches(world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Global batches whose rank-r share routes only to experts 2r and 2r+1."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        x = torch.randn(world * MICRO, WIDTH, generator=gen)
        for row in range(world * MICRO):
            rank, which = divmod(row, MICRO)
            x[row, :EXPERTS] = -5.0
            x[row, 2 * rank + which % 2] = 5.0
        out.append((x, torch.randn(world * MICRO, 3, generator=gen)))
    return out


def reference(world: int) -> dict[str, torch.Tensor]:
    model = build()
    opt = make_optimizer(model)
    for x, y in batches(world):
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(leaf: bool):
    from ds_zero import wrap
    from ds_zero.stage3 import full_state_dict, set_z3_leaf_modules

    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    model = build()
    if leaf:
        set_z3_leaf_modules(model, [MoE])
    trainer = wrap(model, make_optimizer(model), policy=stage3_policy(cap=400, persist=10))
    units = [trainer.sharded.plan.names[id(u)] for u in trainer.sharded.units]
    mine = slice(rank * MICRO, (rank + 1) * MICRO)
    for x, y in batches(world):
        trainer.backward(nn.functional.mse_loss(model(x[mine]), y[mine]))
        assert trainer.step()
    state = full_state_dict(model, rank0_only=False)
    trainer.close()
    return units, state


@pytest.mark.timeout(180)
def test_moe_leaf_is_one_unit_and_matches_single_process():
    results = run_distributed(_train, world_size=2, timeout=150, args=(True,))
    expected = reference(2)
    for units, state in results:
        assert units == ["0", "1", ""]  # the whole MoE block (2,600 elements, over the cap) is one unit
        for key, want in expected.items():
            torch.testing.assert_close(state[key], want, rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.timeout(180)
def test_moe_without_leaf_fails_naming_the_experts():
    with pytest.raises(DistributedTestError) as failure:
        run_distributed(_train, world_size=2, timeout=150, args=(False,))
    text = str(failure.value)
    assert "DivergentPathError" in text and "ranks took different paths" in text
    assert "0.experts.0" in text and "0.experts.2" in text
