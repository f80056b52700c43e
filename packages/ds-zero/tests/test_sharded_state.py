"""Checkpoints reshard: optimizer slices saved by 2 ranks at stage 2 load on 1, 3 and 4 ranks at
stages 1 and 2, and into a plain unsharded optimizer; training continues exactly as if uninterrupted."""

from __future__ import annotations

import pytest
import torch
from _models import global_batches, reference_run, tiny_mlp, zero_trainer

import ds_comm
from ds_comm.testing import run_distributed
from ds_zero.sharded_state import (
    FORMAT,
    consolidate_fp32,
    full_optimizer_state,
)

GLOBAL, GAS, FIRST, TOTAL = 12, 1, 5, 10


def _train(model, opt, steps: range, world: int, rank: int, step_fn) -> None:
    micro = GLOBAL // world
    batches = global_batches(TOTAL, micro, world)
    for s in steps:
        x, y = batches[s]
        mine = slice(rank * micro, (rank + 1) * micro)
        step_fn(torch.nn.functional.mse_loss(model(x[mine]), y[mine]))


def _save_phase(stage: int, out_dir: str):
    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    model = tiny_mlp()
    opt = zero_trainer(model, stage, bucket=150)
    _train(model, opt, range(FIRST), world, rank, lambda loss: (opt.backward(loss), opt.step()))
    torch.save(opt.state_dict(), f"{out_dir}/zero_rank_{rank}.pt")


def _load_phase(stage: int, in_dir: str, saved_ranks: int):
    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    model = tiny_mlp(seed=123)  # different initial weights: everything must come from the checkpoint
    opt = zero_trainer(model, stage, bucket=97, lr=0.5)
    shards = [torch.load(f"{in_dir}/zero_rank_{r}.pt", weights_only=True) for r in range(saved_ranks)]
    opt.load_state_dict(shards)
    assert opt.param_groups[0]["lr"] == 1e-2  # hyperparameters come back too
    _train(model, opt, range(FIRST, TOTAL), world, rank, lambda loss: (opt.backward(loss), opt.step()))
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero_ckpt")
    run_distributed(_save_phase, world_size=2, args=(2, str(out)))
    return str(out)


def _expected():
    return reference_run(TOTAL, GAS, GLOBAL // 2, 2, clip=0.0)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("world", "stage"), [(1, 1), (3, 2), (4, 1), (4, 2)])
def test_reshard_and_continue(saved, world, stage):
    expected = _expected()
    for params in run_distributed(_load_phase, world_size=world, args=(stage, saved, 2)):
        for got, want in zip(params, expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_load_into_unsharded_optimizer_and_consolidate(saved):
    shards = [torch.load(f"{saved}/zero_rank_{r}.pt", weights_only=True) for r in range(2)]
    model = tiny_mlp(seed=7)
    weights = consolidate_fp32(shards)
    model.load_state_dict(weights)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    states = full_optimizer_state(shards)
    for name, p in model.named_parameters():
        opt.state[p] = states[name]
    _train(model, opt, range(FIRST, TOTAL), 1, 0, lambda loss: (loss.backward(), opt.step(), opt.zero_grad()))
    for got, want in zip(model.parameters(), _expected()):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)


def test_partial_checkpoint_is_an_error(saved):
    shard0 = torch.load(f"{saved}/zero_rank_0.pt", weights_only=True)
    with pytest.raises(ValueError, match="cover only part of parameter"):
        consolidate_fp32([shard0])


def _slices(*ranges: tuple[int, int], numel: int = 10) -> dict:
    full = torch.arange(numel, dtype=torch.float32)
    return {
        "format": FORMAT,
        "param_groups": [],
        "group_scalars": {},
        "slices": [
            {
                "key": "w",
                "shape": (numel,),
                "start": a,
                "end": b,
                "group": 0,
                "fp32": full[a:b].clone(),
                "state": {},
            }
            for a, b in ranges
        ],
    }


def test_overlapping_slices_count_once_and_gaps_still_fail():
    """A pipeline's tied module is saved by every stage holding it, each cut at its own boundaries: the
    overlapping ranges hold equal values and must not count twice toward covering the parameter."""
    got = consolidate_fp32([_slices((0, 6)), _slices((4, 10))])
    assert torch.equal(got["w"], torch.arange(10, dtype=torch.float32))
    with pytest.raises(ValueError, match="cover only part of parameter"):  # 6..7 missing, 0..4 twice
        consolidate_fp32([_slices((0, 6)), _slices((0, 4)), _slices((8, 10))])
