"""The multi-rank harness reports failures and timeouts, and leaves no rank behind."""

from __future__ import annotations

import os

import pytest

import ds_comm
from ds_comm.testing import DistributedTestError, run_distributed


def _rank_and_pid():
    return ds_comm.get_rank(), os.getpid()


def _second_rank_raises():
    if ds_comm.get_rank() == 1:
        raise ValueError("boom on rank one")
    return "fine"


def _hang_forever():
    import threading

    threading.Event().wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(120)
def test_results_come_back_by_rank():
    results = run_distributed(_rank_and_pid, world_size=2)
    assert [r for r, _ in results] == [0, 1]
    assert not any(_alive(pid) for _, pid in results)


@pytest.mark.timeout(120)
def test_a_failing_rank_reports_its_traceback():
    with pytest.raises(DistributedTestError, match=r"(?s)rank 1 failed:.*ValueError: boom on rank one"):
        run_distributed(_second_rank_raises, world_size=2)


@pytest.mark.timeout(120)
def test_a_hanging_world_times_out_and_is_killed():
    import multiprocessing

    with pytest.raises(DistributedTestError, match=r"ranks \[0, 1\] did not finish within 15 s"):
        run_distributed(_hang_forever, world_size=2, timeout=15)
    assert multiprocessing.active_children() == []
