"""DeepSpeed's runtime helpers clients call: memory reports, moving nested tensors, RepeatingLoader, timers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ds_engine.dataloader import RepeatingLoader
from ds_engine.runtime_utils import move_to_device, noop_context, noop_decorator, see_memory_usage
from ds_engine.timers import SynchronizedWallClockTimer, ThroughputTimer


def test_see_memory_usage_prints_only_when_forced(capsys):
    see_memory_usage("quiet", force=False)
    assert capsys.readouterr().out == ""
    see_memory_usage("after the forward", force=True)
    out = capsys.readouterr().out
    assert "after the forward" in out and "MA " in out and "Max_CA" in out and "CPU Virtual Memory" in out


def test_move_to_device_copies_nested_tensors():
    a, b = torch.ones(2), torch.zeros(3)
    moved = move_to_device({"x": [a, (b, "label")], "n": 3}, torch.device("meta"))
    assert moved["x"][0].device.type == "meta" and moved["x"][1][0].device.type == "meta"
    assert moved["x"][1][1] == "label" and moved["n"] == 3 and isinstance(moved["x"][1], tuple)
    assert a.device.type == "cpu"  # without a criterion the originals are left alone


def test_move_to_device_with_criterion_keeps_the_objects():
    module = torch.nn.Linear(2, 2)
    big, small = module.weight, module.bias
    out = move_to_device([big, small], torch.device("cpu"), criterion_func=lambda t: t.numel() > 2)
    assert out[0] is big and out[1] is small  # moved in place (accepted) or returned as is (rejected)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="an in-place move needs a second device kind (torch "
    "refuses to swap a CPU tensor's storage for a meta one)",
)
def test_move_to_device_with_criterion_moves_storage_in_place():
    module = torch.nn.Linear(2, 2)
    big, small = module.weight, module.bias
    out = move_to_device([big, small], torch.device("cuda"), criterion_func=lambda t: t.numel() > 2)
    assert out[0] is big and module.weight.device.type == "cuda"  # the module sees the new storage
    assert out[1] is small and module.bias.device.type == "cpu"  # rejected by the criterion: untouched


def test_noop_helpers():
    def f(x):
        return x + 1

    assert noop_decorator(f) is f
    with noop_context():
        pass


def test_repeating_loader_restarts_a_data_loader():
    loader = DataLoader(TensorDataset(torch.arange(3)), batch_size=2)
    repeating = RepeatingLoader(loader)
    seen = [next(repeating)[0].tolist() for _ in range(5)]
    assert seen == [[0, 1], [2], [0, 1], [2], [0, 1]]
    assert iter(repeating) is repeating


def test_wall_clock_timers_measure_and_reset(capsys):
    timers = SynchronizedWallClockTimer()
    timers("fwd").start()
    sum(range(200_000))
    timers("fwd").stop()
    first = timers("fwd").elapsed(reset=False)
    assert first > 0.0 and timers("fwd").elapsed(reset=True) == first
    assert timers("fwd").elapsed() == 0.0
    timers("bwd").start()
    running = timers("bwd").elapsed(reset=False)  # a running timer is read and keeps running
    assert running >= 0.0 and timers("bwd").started_
    timers("bwd").stop()
    timers.log(["fwd", "bwd", "missing"], ranks=[-1])
    out = capsys.readouterr().out
    assert "time (ms)" in out and "bwd:" in out and "missing" not in out
    assert set(timers.get_timers()) == {"fwd", "bwd"}


class _Config:
    enabled = True
    synchronized = True


def test_throughput_timer_reports_samples_per_second():
    lines: list[str] = []
    timer = ThroughputTimer(
        _Config(), batch_size=8, start_step=1, steps_per_output=2, logging_fn=lines.append
    )
    assert timer.avg_samples_per_sec() == float("-inf")
    for _ in range(5):
        timer.start()
        sum(range(100_000))
        timer.stop(global_step=True)
    assert timer.global_step_count == 5 and timer.micro_step_count == 5
    assert timer.avg_samples_per_sec() > 0
    assert len(lines) == 2 and "global_step=4" in lines[1] and "RunningAvgSamplesPerSec" in lines[1]


def test_throughput_timer_disabled_counts_nothing():
    class Off:
        enabled = False
        synchronized = False

    timer = ThroughputTimer(Off(), batch_size=4)
    timer.start()
    timer.stop(global_step=True)
    assert timer.global_step_count == 0
