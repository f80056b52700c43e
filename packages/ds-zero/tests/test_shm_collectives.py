"""Reduce-scatter and all-gather through shared memory (ds_zero.shm_collectives), on real ranks of one
host, against the same collectives computed from every rank's inputs; and ZeRO 1-3 training with the
shared-memory path on and off ending in the same weights."""

from __future__ import annotations

import os

import pytest
import torch

import ds_comm
from ds_comm.testing import run_distributed
from ds_zero import shm_collectives
from ds_zero.shm_collectives import HostCollectives


def _inputs(rank: int, numel: int, dtype: torch.dtype, round_: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + round_)
    return torch.randn(numel, generator=g).to(dtype)


def _exercise(row_bytes: int, shard: int, dtype_name: str):
    dtype = getattr(torch, dtype_name)
    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    host = HostCollectives(None, row_bytes=row_bytes)
    out = {"scatter": [], "gather": [], "rounds": 0}
    for round_ in range(3):  # several collectives in a row: the row sets alternate across calls
        inp = _inputs(rank, shard * world, dtype, round_)
        got = host.reduce_scatter(torch.empty(shard, dtype=dtype), inp, average=round_ == 1)
        out["scatter"].append(got)
        flat = torch.zeros(shard * world, dtype=dtype)
        flat[rank * shard : (rank + 1) * shard] = _inputs(rank, shard, dtype, 50 + round_)
        host.all_gather(flat, flat[rank * shard : (rank + 1) * shard])  # in place, as ZeRO publishes
        out["gather"].append(flat)
    out["rounds"] = host.round
    try:
        host.reduce_scatter(torch.empty(shard + 1, dtype=dtype), _inputs(rank, shard * world, dtype, 0))
    except ValueError as exc:
        out["error"] = str(exc)
    return out


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "world,row_bytes,shard,dtype",
    [
        (2, 1 << 20, 1000, "float32"),  # one round per collective
        (2, 256, 1001, "float32"),  # many rounds, an odd shard: the last chunk is short
        (3, 512, 777, "bfloat16"),
    ],
)
def test_matches_the_collectives_computed_from_every_input(world, row_bytes, shard, dtype) -> None:
    results = run_distributed(_exercise, world, 150, args=(row_bytes, shard, dtype))
    dt = getattr(torch, dtype)
    for round_ in range(3):
        total = torch.zeros(shard * world, dtype=dt)
        for r in range(world):  # the same sum, in rank order, as the ranks compute it
            total = (
                total + _inputs(r, shard * world, dt, round_) if r else _inputs(r, shard * world, dt, round_)
            )
        if round_ == 1:
            total = total / world
        gathered = torch.cat([_inputs(r, shard, dt, 50 + round_) for r in range(world)])
        for rank, res in enumerate(results):
            assert torch.equal(res["scatter"][round_], total[rank * shard : (rank + 1) * shard]), (
                rank,
                round_,
            )
            assert torch.equal(res["gather"][round_], gathered), (rank, round_)
    assert len({r["rounds"] for r in results}) == 1 and results[0]["rounds"] >= 6
    assert "reduce_scatter: input of" in results[0]["error"]


SIZES = (5, 0, 130, 1, 64, 300)  # a bucket's gradients: an empty one, one that spans many rows


def _grads(rank: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7 + rank)
    return [torch.randn(n, generator=g).to(dtype) for n in SIZES]


def _exercise_all_reduce(row_bytes: int, dtype_name: str):
    rank, dtype = ds_comm.get_rank(), getattr(torch, dtype_name)
    host = HostCollectives(None, row_bytes=row_bytes)
    grads = _grads(rank, dtype)
    host.all_reduce_(grads, dtype=torch.float32, scale_in=0.5, scale_out=0.25)
    once = [g.clone() for g in grads]
    host.all_reduce_(grads, dtype=torch.float32)  # a second time: the rows alternate across calls
    try:
        host.all_reduce_([torch.zeros(4, 4)])
    except ValueError as exc:
        error = str(exc)
    return once, grads, host.round, error


def _reference_sum(rows: list[torch.Tensor], scale_out: float, dtype: torch.dtype) -> list[torch.Tensor]:
    """The ranks' sum as they make it: fp32 rows added in rank order, scaled, cast back, split."""
    total = rows[0] + rows[1]
    for row in rows[2:]:
        total = total + row
    return list((total * scale_out).to(dtype).split(SIZES))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "world,row_bytes,dtype", [(2, 1 << 20, "float32"), (2, 64, "float32"), (3, 100, "bfloat16")]
)
def test_all_reduce_sums_in_place_in_rank_order(world, row_bytes, dtype) -> None:
    dt = getattr(torch, dtype)
    results = run_distributed(_exercise_all_reduce, world, 100, args=(row_bytes, dtype))

    def row(grads: list[torch.Tensor], scale: float) -> torch.Tensor:
        parts = []
        for t in grads:
            dst = torch.empty(t.numel())
            torch.mul(t, scale, out=dst) if scale != 1.0 else dst.copy_(t)
            parts.append(dst)
        return torch.cat(parts)

    once = _reference_sum([row(_grads(r, dt), 0.5) for r in range(world)], 0.25, dt)
    twice = _reference_sum([row(once, 1.0)] * world, 1.0, dt)
    for got_once, got_twice, rounds, error in results:
        assert all(torch.equal(a, b) for a, b in zip(got_once, once))
        assert all(torch.equal(a, b) for a, b in zip(got_twice, twice))
        assert rounds == results[0][2]
        assert "flat and contiguous" in error
    if row_bytes == 64:  # 16 fp32 elements a row: many rounds, gradients that span rounds
        assert results[0][2] == 2 * -(-sum(SIZES) // 16)


def _tensors(rank: int) -> list[torch.Tensor]:
    """Mixed dtypes and sizes: pieces smaller than a row share rounds, one tensor spans several rows."""
    g = torch.Generator().manual_seed(rank)
    return [
        torch.randn(3, 5, generator=g),
        torch.randint(0, 100, (7,), generator=g),
        torch.randn(300, generator=g).to(torch.bfloat16),
        torch.rand(11, generator=g) > 0.5,
        torch.randn(2, 1000, generator=g, dtype=torch.float64),
        torch.tensor(float(rank)),
    ]


def _exercise_broadcast(src: int):
    host = HostCollectives(None, row_bytes=512)
    tensors = _tensors(ds_comm.get_rank())
    host.broadcast(tensors, src=src)
    return tensors, host.round


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world,src", [(2, 0), (3, 2)])
def test_broadcast_gives_every_rank_the_sources_tensors(world, src) -> None:
    results = run_distributed(_exercise_broadcast, world, 100, args=(src,))
    want = _tensors(src)
    total = sum(t.numel() * t.element_size() for t in want)
    for rank, (got, rounds) in enumerate(results):
        assert rounds == -(-total // 512), (rank, rounds)  # packed: ceil(bytes / row) rounds, no more
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and torch.equal(g, w), rank


def _train(stage: int, shm: bool):
    os.environ["DS_ZERO_SHM_ALLREDUCE"] = "1" if shm else "0"
    shm_collectives.reset()
    from _models import zero_trainer
    from _stage3_models import stage3_policy
    from torch import nn

    from ds_zero import wrap

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4))
    if stage == 3:
        trainer = wrap(
            model,
            torch.optim.AdamW(model.parameters(), lr=1e-2),
            policy=stage3_policy(cap=64 * 64, persist=0, clip=1.0),
        )
    else:
        trainer = zero_trainer(model, stage, bucket=2000, clip=1.0)
    g = torch.Generator().manual_seed(ds_comm.get_rank())
    losses = []
    for _ in range(4):
        loss = model(torch.randn(4, 16, generator=g)).square().mean()
        trainer.backward(loss)
        trainer.step()
        losses.append(loss.item())
    used = shm_collectives.get(None) is not None
    if stage == 3:
        from ds_zero.stage3 import full_state_dict

        weights = full_state_dict(model, rank0_only=False)
    else:
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return losses, weights, used


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_training_through_shared_memory_equals_c10d(stage) -> None:
    shm = run_distributed(_train, 2, 200, args=(stage, True))
    c10d = run_distributed(_train, 2, 200, args=(stage, False))
    assert shm[0][2] and not c10d[0][2]  # the path under test was taken, and not taken
    for a, b in zip(shm, c10d):
        assert a[0] == b[0]  # 2 ranks: a + b is the same bits in either order
        assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])
