"""The collectives on 2 and 3 real gloo ranks, and the collective log."""

from __future__ import annotations

import pytest
import torch

import ds_comm
from ds_comm.testing import run_distributed


def _exercise_collectives():
    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    out: dict[str, object] = {}
    with ds_comm.comms_log.capture() as log:
        t = torch.full((4,), float(rank + 1))
        ds_comm.all_reduce(t)
        out["all_reduce"] = t.tolist()

        shard = torch.empty(2)
        ds_comm.reduce_scatter_tensor(shard, torch.arange(2.0 * world) * (rank + 1))
        out["reduce_scatter"] = shard.tolist()

        gathered = torch.empty(2 * world)
        ds_comm.all_gather_into_tensor(gathered, torch.tensor([rank, rank * 10.0]))
        out["all_gather"] = gathered.tolist()

        b = torch.tensor([float(rank)])
        ds_comm.broadcast(b, src=world - 1)
        out["broadcast"] = b.item()

        work = ds_comm.all_reduce(torch.ones(3), async_op=True)
        work.wait()
        ds_comm.barrier()
        records = log.records()
    out["log"] = [(r.op, r.nbytes, r.group_size, r.async_op) for r in records]
    out["ranks"] = (rank, world, ds_comm.get_local_rank(), ds_comm.get_backend())
    sub = ds_comm.new_group([0, 1])
    if rank in (0, 1):
        s = torch.ones(1)
        ds_comm.all_reduce(s, group=sub)
        out["subgroup"] = s.item()
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", [2, 3])
def test_collectives_results_and_log(world):
    results = run_distributed(_exercise_collectives, world_size=world)
    total = sum(range(1, world + 1))
    for rank, res in enumerate(results):
        assert res["ranks"] == (rank, world, rank, "gloo")
        assert res["all_reduce"] == [float(total)] * 4
        expected_shard = [total * (2 * rank), total * (2 * rank + 1)]
        assert res["reduce_scatter"] == expected_shard
        assert res["all_gather"] == [v for r in range(world) for v in (r, r * 10.0)]
        assert res["broadcast"] == float(world - 1)
        assert res["log"] == [
            ("all_reduce", 16, world, False),
            ("reduce_scatter_tensor", 8 * world, world, False),
            ("all_gather_into_tensor", 8 * world, world, False),
            ("broadcast", 4, world, False),
            ("all_reduce", 12, world, True),
            ("barrier", 0, world, False),
        ]
        if rank < 2:
            assert res["subgroup"] == 2.0


def test_log_is_off_by_default_and_summarises():
    ds_comm.comms_log.clear()
    assert not ds_comm.comms_log.LOG.enabled
    ds_comm.comms_log.LOG.add(ds_comm.comms_log.CommRecord("all_reduce", 100, 0.5, 2))
    ds_comm.comms_log.LOG.add(ds_comm.comms_log.CommRecord("all_reduce", 50, 0.25, 2))
    assert ds_comm.comms_log.summary() == {"all_reduce": {"count": 2, "bytes": 150, "seconds": 0.75}}
    stats = ds_comm.log_summary(return_dict=True)
    assert (
        stats["summary"]["all_reduce"][100]["count"] == 1 and stats["summary"]["all_reduce"][50]["count"] == 1
    )
    ds_comm.comms_log.clear()


def test_configure_from_a_deepspeed_config():
    ds_comm.configure({"comms_logger": {"enabled": True, "verbose": False}})
    assert ds_comm.comms_log.LOG.enabled
    ds_comm.configure(enabled=False)
    assert not ds_comm.comms_log.LOG.enabled


def test_rank_queries_without_a_process_group():
    assert (ds_comm.get_rank(), ds_comm.get_world_size()) == (0, 1)
