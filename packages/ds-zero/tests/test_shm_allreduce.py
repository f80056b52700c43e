"""The pipe barrier of the shared-memory collectives, and the check that they can serve, on 2 real ranks
of one host (the all-reduce itself: test_shm_collectives)."""

from __future__ import annotations

import time

import pytest

import ds_comm
from ds_comm.testing import run_distributed
from ds_zero.shm_allreduce import PipeBarrier, usable


def _exercise():
    rank = ds_comm.get_rank()
    out = {"usable": usable(None, 1 << 20)}
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
def test_barriers_run_ahead_and_time_out() -> None:
    results = run_distributed(_exercise, world_size=2)
    assert all(r["usable"] for r in results)
    message, elapsed = results[0]["timeout"]
    assert "rank(s) [1] did not arrive within 1 s" in message and elapsed < 10
