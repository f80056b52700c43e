"""Seeing a run: monitors (TensorBoard, CSV, W&B offline, Comet offline) from a real 2-rank run, read back
with each tool's own reader; DeepSpeed's timer events; the communication summary's byte counts against the
ZeRO-2 volumes of packages/ds-zero/tests/test_comm_volume.py; the FLOPs profile and memory in the step log.

W&B, Comet and TensorBoard are test-only dependencies (``pip install 'ds-engine[monitors]'``); their
tests skip when the package is missing."""

from __future__ import annotations

import csv
import glob
import json
import logging
import struct
import zipfile
from pathlib import Path

import engine_workers as w
import monitoring_workers as mw
import pytest
import torch

import deepspeed
from ds_comm.testing import run_distributed

STEPS = 3
TIMER_EVENTS = [
    "Train/Samples/elapsed_time_ms_forward",
    "Train/Samples/elapsed_time_ms_backward",
    "Train/Samples/elapsed_time_ms_backward_inner",
    "Train/Samples/elapsed_time_ms_backward_allreduce",
    "Train/Samples/elapsed_time_ms_step",
]


def _wandb_history(path: str) -> list[dict]:
    """History rows of an offline W&B run file (LevelDB-style log of ``wandb_internal_pb2.Record``s)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = Path(path).read_bytes()
    assert raw[:4] == b":W&B"
    pos, block, chunk, rows = 7, 32768, b"", []
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", raw[pos + 4 : pos + 7])
        data, pos = raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        chunk = data if kind in (1, 2) else chunk + data  # FULL/FIRST start a record, MIDDLE/LAST extend it
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunk)
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                )
    return rows


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory):
    for package in ("tensorboard", "wandb", "comet_ml"):
        pytest.importorskip(package)
    out = tmp_path_factory.mktemp("monitored")
    results = run_distributed(mw.train_with_monitors, world_size=2, timeout=240, args=(str(out), STEPS))
    return out, results


@pytest.mark.timeout(300)
def test_tensorboard_events_load_in_tensorboards_reader(monitored_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, results = monitored_run
    assert results[0]["has_monitors"] and not results[1]["has_monitors"]  # rank 0 writes, alone
    runs = glob.glob(str(out / "tb" / "run" / "events.out.tfevents.*"))
    assert len(runs) == 1
    acc = EventAccumulator(runs[0])
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"Train/Samples/lr", "Train/Samples/train_loss", "Client/accuracy", *TIMER_EVENTS} <= tags
    lr = acc.Scalars("Train/Samples/lr")
    assert [e.step for e in lr] == [w.GLOBAL * (i + 1) for i in range(STEPS)]
    assert [e.value for e in lr] == pytest.approx(results[0]["lrs"])
    assert all(e.value > 0 for e in acc.Scalars("Train/Samples/elapsed_time_ms_forward"))
    assert [e.value for e in acc.Scalars("Train/Samples/elapsed_time_ms_backward_allreduce")] == [0.0] * STEPS
    assert acc.Scalars("Client/accuracy")[0].value == pytest.approx(0.75)


@pytest.mark.timeout(300)
def test_csv_files_have_deepspeeds_layout(monitored_run) -> None:
    out, results = monitored_run
    directory = out / "csv" / "run"
    names = sorted(p.name for p in directory.iterdir())
    assert "Train_Samples_lr.csv" in names and "Train_Samples_elapsed_time_ms_step.csv" in names
    rows = list(csv.reader((directory / "Train_Samples_lr.csv").open()))
    assert rows[0] == ["step", "lr"]
    assert [int(r[0]) for r in rows[1:]] == [w.GLOBAL * (i + 1) for i in range(STEPS)]
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(results[0]["lrs"])
    assert list(csv.reader((directory / "Client_accuracy.csv").open())) == [
        ["step", "accuracy"],
        [str(results[0]["samples"]), "0.75"],
    ]


@pytest.mark.timeout(300)
def test_wandb_offline_run_holds_the_events(monitored_run) -> None:
    out, results = monitored_run
    files = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1  # one run, from rank 0
    history = _wandb_history(files[0])
    lrs = [row["Train/Samples/lr"] for row in history if "Train/Samples/lr" in row]
    assert lrs == pytest.approx(results[0]["lrs"])
    assert [row["_step"] for row in history if "Train/Samples/lr" in row] == [
        w.GLOBAL * (i + 1) for i in range(STEPS)
    ]
    assert any("Train/Samples/elapsed_time_ms_forward" in row for row in history)


@pytest.mark.timeout(300)
def test_comet_offline_archive_holds_the_events(monitored_run) -> None:
    out, results = monitored_run
    archives = glob.glob(str(out / "comet" / "*.zip"))
    assert len(archives) == 1
    with zipfile.ZipFile(archives[0]) as archive:
        messages = [json.loads(line) for line in archive.read("messages.json").decode().splitlines()]
    metrics = [m["payload"]["metric"] for m in messages if m.get("type") == "metric_msg"]
    lr = [(m["step"], m["metricValue"]) for m in metrics if m["metricName"] == "Train/Samples/lr"]
    assert [s for s, _ in lr] == [w.GLOBAL * (i + 1) for i in range(STEPS)]
    assert [float(v) for _, v in lr] == pytest.approx(results[0]["lrs"])


@pytest.mark.timeout(180)
def test_comm_summary_bytes_equal_the_zero2_volumes() -> None:
    padded, units, gas, totals = run_distributed(mw.one_step_comm_log, world_size=2, timeout=150)[0]
    # As packages/ds-zero/tests/test_comm_volume.py: stage 2 reduce-scatters every micro-step's gradients,
    # all-gathers the parameters once per step, and all-reduces one scalar (the gradient norm).
    assert totals["reduce_scatter_tensor"] == {"count": gas * units, "bytes": gas * padded * 4}
    assert totals["all_gather_into_tensor"] == {"count": units, "bytes": padded * 4}
    assert totals["all_reduce"] == {"count": 1, "bytes": 4}
    assert set(totals) == {"reduce_scatter_tensor", "all_gather_into_tensor", "all_reduce"}


def _engine(cfg: dict):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    engine, *_ = deepspeed.initialize(
        model=model,
        config={"train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, **cfg},
        dist_init_required=False,
    )
    return engine


def _steps(engine, n: int) -> None:
    for i in range(n):
        x = torch.randn(2, 6, generator=torch.Generator().manual_seed(i))
        engine.backward(engine(x).pow(2).mean())
        engine.step()


def test_flops_profiler_section_prints_the_profiled_step(tmp_path) -> None:
    out = tmp_path / "flops.txt"
    engine = _engine(
        {
            "wall_clock_breakdown": True,
            "flops_profiler": {
                "enabled": True,
                "profile_step": 2,
                "module_depth": -1,
                "top_modules": 2,
                "output_file": str(out),
            },
        }
    )
    _steps(engine, 2)
    assert not out.exists()  # not yet: global step 2's forward comes next
    _steps(engine, 2)
    text = out.read_text()
    assert "Profile Summary at step 2:" in text and "world size:" in text and "batch size per GPU:" in text
    assert "params per GPU:" in text and "(0): Linear(" in text and "bwd latency:" in text
    macs = 2 * (6 * 16 + 16 * 3)
    assert f"fwd MACs per GPU:{' ' * 55}{macs} MACs" in text
    assert not hasattr(engine.module[0], "__flops__")  # profile removed after printing


def test_timers_and_memory_in_the_step_log_and_no_timers_when_off() -> None:
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    engine = _engine({"steps_per_print": 1, "memory_breakdown": True, "wall_clock_breakdown": True})
    quiet = _engine({"steps_per_print": 1})
    logging.getLogger("ds_engine").addHandler(handler)  # after initialize, which sets the logger up
    try:
        _steps(engine, 3)
        _steps(quiet, 1)
    finally:
        logging.getLogger("ds_engine").removeHandler(handler)
    steps = [r for r in records if r.startswith("step=")]
    assert "mem_allocated:" in steps[0] and "max_cache_allocated:" in steps[0]
    assert "mem_allocated:" not in steps[3]
    assert sum(r.startswith("time (ms)") for r in records) == 3  # the quiet engine logs no timers
    # DeepSpeed's throughput line once past ThroughputTimer's two warm-up steps (rank 0, steps_per_print)
    speed = [r for r in records if "RunningAvgSamplesPerSec=" in r]
    assert len(speed) == 1 and speed[0].startswith("epoch=0/micro_step=3/global_step=3, ")
    assert set(engine.get_wall_clock_timers()) >= {
        "fwd",
        "bwd",
        "bwd_inner",
        "bwd_allreduce",
        "step",
        "fwd_microstep",
    }
    assert engine.get_wall_clock_timers()["fwd"] > 0
    assert isinstance(quiet.timers, deepspeed.utils.timer.NoopTimer) and quiet.get_wall_clock_timers() == {}


def test_checkpoint_save_and_load_log_each_file(tmp_path) -> None:
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    engine = _engine({"zero_optimization": {"stage": 1}})
    logging.getLogger("ds_engine").addHandler(handler)  # after initialize, which sets the logger up
    try:
        _steps(engine, 1)
        engine.save_checkpoint(str(tmp_path), tag="t1")
        saved = [r for r in records if r.startswith("checkpoint: saved")]
        engine.load_checkpoint(str(tmp_path), tag="t1")
        loaded = [r for r in records if r.startswith("checkpoint: loaded")]
    finally:
        logging.getLogger("ds_engine").removeHandler(handler)
    files = sorted(str(p) for p in (tmp_path / "t1").glob("*.pt"))
    assert len(files) >= 2  # model states and this rank's optimizer states
    assert sorted(r.split()[2] for r in saved) == files
    assert all(r.endswith(" s)") and " MiB in " in r for r in saved)
    # loads through safe_load are logged (the model states); optimizer rank files are read by ds_zero
    assert str(tmp_path / "t1" / "mp_rank_00_model_states.pt") in {r.split()[2] for r in loaded}
