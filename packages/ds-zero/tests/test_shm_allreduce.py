"""The shared-memory all-reduce and its pipe barrier, on 2 real ranks of one host."""

from __future__ import annotations

import time

import pytest
import torch

import ds_comm
from ds_comm.testing import run_distributed
from ds_zero.shm_allreduce import PipeBarrier, SharedMemoryAllReduce, usable


def _exercise():
    rank = ds_comm.get_rank()
    out = {"usable": usable(None, 1 << 20)}
    reducer = SharedMemoryAllReduce(1000, torch.float32)
    sums = []
    for round_ in range(5):  # alternating row sets, several rounds in a row
        reducer.input.copy_(torch.arange(1000, dtype=torch.float32) * (rank + 1) + round_)
        sums.append(reducer.reduce(scale=0.5).clone())
    out["sums"] = sums
    barrier = PipeBarrier(group=None, timeout=2.0)
    if rank == 0:  # run ahead: two barriers before rank 1 arrives at its first
        barrier.wait()
        barrier.wait()
    else:
        time.sleep(0.2)  # arrive late on purpose; the bytes rank 0 sent early must be kept, not lost
        barrier.wait()
        barrier.wait()
    lonely = PipeBarrier(group=None, timeout=1.0)
    if rank == 0:
        start = time.monotonic()
        try:
            lonely.wait()
        except RuntimeError as exc:
            out["timeout"] = (str(exc), time.monotonic() - start)
    ds_comm.barrier()
    return out


@pytest.mark.timeout(120)
def test_sums_rounds_barriers_and_timeouts() -> None:
    results = run_distributed(_exercise, world_size=2)
    assert all(r["usable"] for r in results)
    for round_, got in enumerate(results[0]["sums"]):
        want = (torch.arange(1000, dtype=torch.float32) * 3 + 2 * round_) * 0.5
        assert torch.equal(got, want) and torch.equal(results[1]["sums"][round_], got)
    message, elapsed = results[0]["timeout"]
    assert "rank(s) [1] did not arrive within 1 s" in message and elapsed < 10
