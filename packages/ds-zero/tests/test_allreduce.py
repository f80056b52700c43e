"""Stage 0's bucketed all-reduce on 2 real gloo ranks: averages, buckets, and silence before the boundary."""

from __future__ import annotations

import pytest
import torch

import ds_comm
from ds_comm.testing import run_distributed
from ds_zero import ReducePolicy, ZeroPolicy, wrap
from ds_zero.allreduce import BucketedAllReduce, plan_buckets


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(5, 7)
        self.b = torch.nn.Linear(7, 2)
        self.sometimes = torch.nn.Linear(5, 2)  # used by rank 1 only
        self.never = torch.nn.Linear(5, 2)  # used by nobody

    def forward(self, x: torch.Tensor, use_sometimes: bool) -> torch.Tensor:
        out = self.b(torch.tanh(self.a(x)))
        return out + self.sometimes(x) if use_sometimes else out


def _batch(rank: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 * rank + micro)
    return torch.randn(3, 5, generator=gen), torch.randn(3, 2, generator=gen)


def _reference_grads(world: int) -> dict[str, torch.Tensor]:
    """Single process: every rank's two micro-batches, averaged as data parallelism should."""
    net = _Net()
    for rank in range(world):
        for micro in range(2):
            x, y = _batch(rank, micro)
            torch.nn.functional.mse_loss(net(x, rank == 1), y).div(2 * world).backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _accumulate_then_sync(prescale: bool, predivide: float):
    rank = ds_comm.get_rank()
    net = _Net()
    policy = ZeroPolicy(reduce=ReducePolicy(bucket_numel=40, prescale=prescale, predivide_factor=predivide))
    trainer = wrap(net, torch.optim.SGD(net.parameters(), lr=0.0), policy=policy)
    ds_comm.comms_log.enable()
    ds_comm.comms_log.LOG.clear()
    trainer.set_gradient_accumulation_boundary(False)
    x, y = _batch(rank, 0)
    trainer.backward(torch.nn.functional.mse_loss(net(x, rank == 1), y).div(2))
    silent = [r.op for r in ds_comm.comms_log.records()]
    trainer.set_gradient_accumulation_boundary(True)
    x, y = _batch(rank, 1)
    trainer.backward(torch.nn.functional.mse_loss(net(x, rank == 1), y).div(2))
    trainer.reducer.finish()
    reduces = [r for r in ds_comm.comms_log.records() if r.op == "all_reduce"]
    ds_comm.comms_log.disable()
    grads = {n: (p.grad.clone() if p.grad is not None else None) for n, p in net.named_parameters()}
    buffers = sum(b.buffer is not None for b in trainer.reducer.buckets)  # gradient copies held
    return silent, len(reduces), len(trainer.reducer.buckets), grads, trainer.reducer.transport, buffers


SCALINGS = [(False, 1.0), (True, 1.0), (False, 2.0)]  # post-scaling, DeepSpeed's prescale, predivide factor


def _second_backward_in_the_boundary_step():
    """Two backward passes in the boundary micro-step: the buckets started by the first are redone."""
    rank = ds_comm.get_rank()
    net = _Net()
    trainer = wrap(
        net,
        torch.optim.SGD(net.parameters(), lr=0.0),
        policy=ZeroPolicy(reduce=ReducePolicy(bucket_numel=40)),
    )
    for micro in range(2):
        x, y = _batch(rank, micro)
        trainer.backward(torch.nn.functional.mse_loss(net(x, rank == 1), y).div(2))
    trainer.reducer.finish()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _all_scalings():
    runs = [_accumulate_then_sync(prescale, predivide) for prescale, predivide in SCALINGS]
    return runs, _second_backward_in_the_boundary_step()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("world", "transport"), [(2, "shm"), (2, "c10d"), (3, "shm")])
def test_gradients_are_averaged_only_at_the_boundary(world: int, transport: str) -> None:
    env = {"DS_ZERO_SHM_ALLREDUCE": "1" if transport == "shm" else "0"}
    per_rank = run_distributed(_all_scalings, world_size=world, env=env)
    reference = _reference_grads(world)
    for _, twice in per_rank:
        for name, want in reference.items():
            torch.testing.assert_close(twice[name], want, rtol=0, atol=1e-6)
    for variant in range(len(SCALINGS)):
        results = [per_rank[rank][0][variant] for rank in range(world)]
        for silent, n_reduces, n_buckets, grads, used, buffers in results:
            assert used == transport
            # Through shared memory the gradients hold their own sum (Note [bounded segment]).
            assert buffers == (0 if transport == "shm" else n_buckets)
            assert silent == []  # no collective while accumulating
            assert n_reduces == n_buckets > 1  # one all-reduce per bucket at the boundary
            assert grads["never.weight"] is None and grads["never.bias"] is None
            for name, want in reference.items():
                torch.testing.assert_close(grads[name], want, rtol=0, atol=1e-6)
        for other in results[1:]:  # replicas stay bit-identical
            assert all(torch.equal(results[0][3][n], other[3][n]) for n in reference)


def test_buckets_follow_readiness_order_and_size() -> None:
    holders = [
        torch.zeros(10),
        torch.zeros(30),
        torch.zeros(5),
        torch.zeros(50),
        torch.zeros(1, dtype=torch.float64),
    ]
    buckets = plan_buckets(holders, 40, None)
    assert [[h.numel() for h in b.holders] for b in buckets] == [[10, 30], [5], [50], [1]]
    assert buckets[-1].dtype == torch.float64


def test_single_rank_reducer_is_idle() -> None:
    reducer = BucketedAllReduce([torch.nn.Parameter(torch.zeros(3))], policy=ReducePolicy())
    assert not reducer.active
    reducer.finish()  # nothing to do, no process group needed
