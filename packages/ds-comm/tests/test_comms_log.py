"""DeepSpeed's communication logger: ``comms_logger`` switches (prof_all, prof_ops, verbose, debug), the
bandwidth columns and ``log_summary()``'s table, over real gloo collectives on 2 ranks."""

from __future__ import annotations

import pytest
import torch

import ds_comm
from ds_comm import comms_log
from ds_comm.bandwidth import bandwidth_gbps, convert_size
from ds_comm.testing import run_distributed


def test_bandwidth_follows_nccl_tests_definitions() -> None:
    # 1 GB in 1 s on 4 ranks: all-reduce moves each byte twice, busbw scales by 2(n-1)/n.
    assert bandwidth_gbps("all_reduce", 10**9, 1.0, 4) == pytest.approx((16.0, 12.0))
    assert bandwidth_gbps("all_gather_into_tensor", 10**9, 1.0, 4) == pytest.approx((8.0, 6.0))
    assert bandwidth_gbps("broadcast", 10**9, 2.0, 4) == pytest.approx((4.0, 4.0))
    assert bandwidth_gbps("all_reduce", 10, 0.0, 2) == (0.0, 0.0)
    assert (convert_size(0), convert_size(1536), convert_size(3 * 2**20)) == ("0B", "1.5 KB", "3.0 MB")


def _logged_ops(prof_all: bool, prof_ops: list[str], debug: bool) -> dict:
    ds_comm.configure(enabled=True, prof_all=prof_all, prof_ops=prof_ops, verbose=True, debug=debug)
    comms_log.clear()
    t = torch.ones(256)
    ds_comm.all_reduce(t)
    ds_comm.all_reduce(torch.ones(64))
    out = torch.empty(256 * ds_comm.get_world_size())
    ds_comm.all_gather_into_tensor(out, t)
    ds_comm.broadcast(t, src=0)
    stats = ds_comm.log_summary(return_dict=True)
    ds_comm.configure(enabled=False)
    return stats["summary"]


@pytest.mark.timeout(120)
def test_switches_and_summary_on_two_ranks(capfd) -> None:
    everything = run_distributed(_logged_ops, world_size=2, args=(True, [], False))[0]
    assert set(everything) == {"all_reduce", "all_gather_into_tensor", "broadcast"}
    assert {size: row["count"] for size, row in everything["all_reduce"].items()} == {1024: 1, 256: 1}
    assert list(everything["all_gather_into_tensor"]) == [2048]  # the gathered whole: 2 ranks x 1 KiB
    row = everything["all_reduce"][1024]
    assert row["total_latency_ms"] > 0 and row["tput_avg_gbps"] > 0 and row["msg_size_str"] == "1.0 KB"
    assert row["busbw_avg_gbps"] == pytest.approx(row["tput_avg_gbps"] / 2)  # 2(n-1)/n with n=2, over 2x
    only = run_distributed(_logged_ops, world_size=2, args=(False, ["broadcast"], True))[0]
    assert list(only) == ["broadcast | [Caller Func: _logged_ops]"]
    out = capfd.readouterr().out
    assert "comm op: all_reduce | time (ms):" in out and "| busbw (Gbps):" in out  # verbose lines
    header = out[out.index("Comm. Op") :].splitlines()
    assert header[0].split() == [
        "Comm.",
        "Op",
        "Message",
        "Size",
        "Count",
        "Total",
        "Latency(ms)",
        "Avg",
        "Latency(ms)",
        "tput_avg",
        "(Gbps)",
        "busbw_avg",
        "(Gbps)",
    ]
    assert header[1] == "all_reduce"  # then one row per message size, smallest first
    assert header[2].split()[:3] == ["256.0", "B", "1"] and header[3].split()[:3] == ["1.0", "KB", "1"]


def test_configure_reads_every_switch_from_a_config() -> None:
    ds_comm.configure(
        {"comms_logger": {"enabled": True, "prof_all": False, "prof_ops": ["all_reduce"], "debug": True}}
    )
    try:
        assert (comms_log.LOG.prof_all, comms_log.LOG.prof_ops, comms_log.LOG.debug) == (
            False,
            ["all_reduce"],
            True,
        )
        assert comms_log.LOG.wants("all_reduce") and not comms_log.LOG.wants("broadcast")
    finally:
        ds_comm.configure(enabled=False)
    assert ds_comm.log_summary() is None
