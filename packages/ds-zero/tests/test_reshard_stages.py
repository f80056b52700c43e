"""Stage 0 <-> stages 1/2 through the one slice format: save at one stage, load at another."""

from __future__ import annotations

import pytest
import torch
from _models import global_batches, reference_run, tiny_mlp, zero_trainer

import ds_comm
from ds_comm.testing import run_distributed
from ds_zero.replicated_state import load_replicated_state_dict, replicated_state_dict

GLOBAL, FIRST, TOTAL = 12, 4, 8


def _steps(model, opt, steps, world, rank):
    micro = GLOBAL // world
    batches = global_batches(TOTAL, micro, world)
    for s in steps:
        x, y = batches[s]
        mine = slice(rank * micro, (rank + 1) * micro)
        opt.backward(torch.nn.functional.mse_loss(model(x[mine]), y[mine]))
        assert opt.step()


def _state(opt):
    return opt.state_dict() if opt.policy.stage > 0 else replicated_state_dict(opt)


def _save(stage: int, path: str):
    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    model = tiny_mlp()
    opt = zero_trainer(model, stage, bucket=150)
    _steps(model, opt, range(FIRST), world, rank)
    torch.save(_state(opt), f"{path}/shard_{rank}.pt")


def _load(stage: int, path: str, saved_world: int):
    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    model = tiny_mlp(seed=99)
    opt = zero_trainer(model, stage, bucket=120)
    shards = [torch.load(f"{path}/shard_{r}.pt", weights_only=True) for r in range(saved_world)]
    if stage > 0:
        opt.load_state_dict(shards)
    else:
        load_replicated_state_dict(opt, shards)
    _steps(model, opt, range(FIRST, TOTAL), world, rank)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("save_stage", "save_world", "load_stage", "load_world"),
    [(0, 1, 2, 2), (2, 2, 0, 1), (0, 2, 1, 3), (1, 2, 0, 2)],
)
def test_save_at_one_stage_load_at_another(tmp_path, save_stage, save_world, load_stage, load_world):
    run_distributed(_save, world_size=save_world, args=(save_stage, str(tmp_path)))
    expected = reference_run(TOTAL, 1, GLOBAL // 2, 2, clip=0.0)
    for params in run_distributed(_load, world_size=load_world, args=(load_stage, str(tmp_path), save_world)):
        for got, want in zip(params, expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
