"""``deepspeed --autotuning tune|run`` end to end through the real CLI, with real launches of a torch-free
stand-in job (scripts/autotuning_job.py plays the engine's part; the real engine is tests/autotuning/)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _launch_util import DEEPSPEED, SCRIPTS, free_port, make_ready_fifo, read_pids, wait_gone

JOB = str(SCRIPTS / "autotuning_job.py")


def _throughput(stage: int, micro: int) -> float:
    return 100.0 * micro / (micro + 2) + stage  # the stand-in's formula


def _setup(tmp_path: Path, **autotuning) -> Path:
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-3}},
        "autotuning": {"enabled": True, "max_train_micro_batch_size_per_gpu": 4, **autotuning},
    }
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(config))
    return path


def _tune(tmp_path: Path, env: dict, mode: str = "tune", *extra: str) -> subprocess.CompletedProcess:
    argv = [
        *DEEPSPEED,
        "--autotuning",
        mode,
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        JOB,
        "--deepspeed",
        "--deepspeed_config",
        "ds_config.json",
        *extra,
    ]
    return subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)


def _exp(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "autotuning_results" / name / "exp.json").read_text())


@pytest.mark.timeout(300)
def test_tune_explores_every_stage_skips_a_failure_and_writes_the_best(tmp_path, launch_env):
    _setup(tmp_path)
    done = _tune(tmp_path, dict(launch_env, AT_FAIL="2:2"))
    assert done.returncode == 0, done.stdout + done.stderr
    results, exps = tmp_path / "autotuning_results", tmp_path / "autotuning_exps"
    names = [f"z{s}_gas1_tmbspg{m}" for s in range(4) for m in (1, 2, 4)]
    assert sorted(p.stem for p in exps.glob("*.json")) == sorted(["profile_model_info", *names])
    for name in names:
        assert {"cmd.txt", "ds_config.json", "exp.json", "stdout.log", "stderr.log"} <= {
            p.name for p in (results / name).iterdir()
        }
    failed = _exp(tmp_path, "z2_gas1_tmbspg2")
    assert failed["status"] == "failed" and "RuntimeError: deliberate failure at 2:2" in failed["error"]
    assert "z2_gas1_tmbspg2: FAILED: exit code 1: RuntimeError: deliberate failure at 2:2" in done.stdout
    # Live progress: n of m, best so far; then DeepSpeed's summary table.
    assert (
        "experiment 1/3 z0_gas1_tmbspg1: throughput 33.33 samples/s | best so far: z0_gas1_tmbspg1"
        in done.stdout
    )
    assert "experiment 12/12 z3_gas1_tmbspg4" in done.stdout
    assert "| global       | 12              | 69.6667         | z3_gas1_tmbspg4 |" in done.stdout
    assert (results / "summary.txt").read_text().startswith("| tuning_space | num_experiments |")
    measured = {
        n: json.loads((results / n / "metrics.json").read_text())["throughput"]
        for n in names
        if _exp(tmp_path, n)["status"] == "ok"
    }
    assert len(measured) == 11 and max(measured, key=measured.get) == "z3_gas1_tmbspg4"
    assert measured["z1_gas1_tmbspg2"] == pytest.approx(_throughput(1, 2))
    optimal = json.loads((results / "ds_config_optimal.json").read_text())
    best = json.loads((results / "z3_gas1_tmbspg4" / "ds_config.json").read_text())
    assert "autotuning" not in optimal and optimal == {k: v for k, v in best.items() if k != "autotuning"}
    assert (optimal["zero_optimization"], optimal["train_micro_batch_size_per_gpu"]) == ({"stage": 3}, 4)
    assert (results / "cmd_optimal.txt").read_text().startswith("deepspeed --num_gpus 2 --master_port ")
    assert not list(tmp_path.glob("rank*")) and "AT_RECORD" not in launch_env  # tune did not train


@pytest.mark.timeout(300)
def test_memory_formulas_and_oom_prune(tmp_path, launch_env):
    # The stand-in's model: 1e6 parameters, 1000 bytes of activations per sample. With 2 ranks in fp32, stage 0
    # needs 16e6 bytes + 1000 * micro batch: a budget of 16e6 + 3000 fits micro batches 1 and 2, not 4.
    path = _setup(tmp_path, memory_per_device=16_003_000)
    config = json.loads(path.read_text())
    config["zero_optimization"] = {"stage": [0, 1]}
    path.write_text(json.dumps(config))
    done = _tune(tmp_path, dict(launch_env, AT_OOM="1:2", AT_NO_METRICS="0:1"))
    assert done.returncode == 0, done.stdout + done.stderr
    pruned = _exp(tmp_path, "z0_gas1_tmbspg4")
    assert pruned["status"] == "pruned"
    assert (
        pruned["error"] == "needs 16,004,000 B per rank by the ZeRO memory formulas, 16,003,000 B available"
    )
    assert not (tmp_path / "autotuning_exps" / "z0_gas1_tmbspg4.json").exists()  # never launched
    assert _exp(tmp_path, "z0_gas1_tmbspg1")["status"] == "no_metrics"
    oom = _exp(tmp_path, "z1_gas1_tmbspg2")
    assert oom["status"] == "oom" and "MemoryError: out of memory" in oom["error"]
    after_oom = _exp(tmp_path, "z1_gas1_tmbspg4")
    assert after_oom == {
        **after_oom,
        "status": "pruned",
        "error": "micro batch 2 already ran out of memory at stage 1",
    }
    assert "pruned z1_gas1_tmbspg4: micro batch 2 already ran out of memory at stage 1" in done.stdout
    optimal = json.loads((tmp_path / "autotuning_results" / "ds_config_optimal.json").read_text())
    assert (optimal["zero_optimization"]["stage"], optimal["train_micro_batch_size_per_gpu"]) == (0, 2)


@pytest.mark.timeout(300)
def test_run_reuses_results_then_trains_with_the_best(tmp_path, launch_env):
    _setup(
        tmp_path,
        overwrite=False,
        metric="latency",
        tuner_type="random",
        arg_mappings={"train_micro_batch_size_per_gpu": "--bs"},
    )
    record = tmp_path / "record.json"
    env = dict(launch_env, AT_RECORD=str(record))
    first = _tune(tmp_path, env, "tune", "--bs", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert not record.exists()
    logs = {p: p.stat().st_mtime_ns for p in (tmp_path / "autotuning_results").glob("*/stdout.log")}
    second = _tune(tmp_path, env, "run", "--bs", "1")
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("(previous result reused)") == 12
    assert "Experiments run: 0, reused: 12" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in logs} == logs  # nothing was launched again
    # Latency is minimised: the stand-in's fastest step is the smallest global batch at stage 3.
    latency = {
        p.parent.name: json.loads(p.read_text())["latency"]
        for p in (tmp_path / "autotuning_results").glob("z*/metrics.json")
    }
    assert min(latency, key=latency.get) == "z3_gas1_tmbspg1"
    trained = json.loads(record.read_text())
    optimal_path = str(tmp_path / "autotuning_results" / "ds_config_optimal.json")
    assert trained["config"] == json.loads(Path(optimal_path).read_text())
    assert trained["config"]["zero_optimization"]["stage"] == 3 and trained["world_size"] == 2
    assert trained["argv"][-4:] == ["--deepspeed_config", optimal_path, "--bs", "1"]
    assert "training with the best config: deepspeed --num_gpus 2" in second.stdout


@pytest.mark.timeout(300)
def test_knobs_outside_fast_mode_with_early_stopping(tmp_path, launch_env):
    path = _setup(tmp_path, fast=False, tuner_early_stopping=2)
    config = json.loads(path.read_text())
    config["train_micro_batch_size_per_gpu"] = [1, 2]
    config["zero_optimization"] = {
        "stage": 1,
        "reduce_bucket_size": [50_000_000, 500_000_000],
        "allgather_bucket_size": 500_000_000,
    }
    path.write_text(json.dumps(config))
    done = _tune(tmp_path, launch_env)
    assert done.returncode == 0, done.stdout + done.stderr
    run = sorted(p.stem for p in (tmp_path / "autotuning_exps").glob("z*.json"))
    # The micro batch sweep, then knob experiments best micro batch first, until two bring no improvement
    # (the stand-in's throughput ignores the buckets).
    assert run == ["z1_gas1_tmbspg1", "z1_gas1_tmbspg2", "z1_gas1_tmbspg2_rbs5e7", "z1_gas1_tmbspg2_rbs5e8"]
    knobbed = json.loads(
        (tmp_path / "autotuning_results" / "z1_gas1_tmbspg2_rbs5e7" / "ds_config.json").read_text()
    )
    assert knobbed["zero_optimization"] == {
        "stage": 1,
        "reduce_bucket_size": 50_000_000,
        "allgather_bucket_size": 500_000_000,
    }
    assert "stage search stopped early: no improvement in the last 2 experiments" in done.stdout


@pytest.mark.timeout(300)
def test_trial_budget_per_stage(tmp_path, launch_env):
    path = _setup(tmp_path, tuner_num_trials=2)
    config = json.loads(path.read_text())
    config["zero_optimization"] = {"stage": [0, 2]}
    path.write_text(json.dumps(config))
    done = _tune(tmp_path, launch_env)
    assert done.returncode == 0, done.stdout + done.stderr
    run = sorted(p.stem for p in (tmp_path / "autotuning_exps").glob("z*.json"))
    assert run == ["z0_gas1_tmbspg1", "z0_gas1_tmbspg2", "z2_gas1_tmbspg1", "z2_gas1_tmbspg2"]
    assert done.stdout.count("stage search stopped after autotuning.tuner_num_trials=2 experiments") == 2
    assert "experiment 4/4 z2_gas1_tmbspg2" in done.stdout


@pytest.mark.timeout(120)
def test_profiling_failure_is_one_clear_line(tmp_path, launch_env):
    path = _setup(tmp_path)
    config = json.loads(path.read_text())
    config["zero_optimization"] = {"stage": 1}
    path.write_text(json.dumps(config))
    done = _tune(tmp_path, dict(launch_env, AT_FAIL="1:1"))
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "deepspeed: error: the model profiling run failed (failed: exit code 1: RuntimeError: deliberate failure"
        )
    )
    assert "Traceback" not in done.stderr


@pytest.mark.timeout(120)
def test_interrupt_stops_the_experiment_and_leaves_nothing_behind(tmp_path, launch_env):
    _setup(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    fifo = make_ready_fifo(out)
    argv = [
        *DEEPSPEED,
        "--autotuning",
        "tune",
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        JOB,
        "--deepspeed_config",
        "ds_config.json",
    ]
    proc = subprocess.Popen(
        argv,
        env=dict(launch_env, AT_HANG="0:2", OUT_DIR=str(out)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        got, deadline = 0, time.monotonic() + 90
        while got < 2:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "the hanging experiment's ranks never became ready"
            got += len(os.read(fd, 2))
    finally:
        os.close(fd)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, stdout + stderr
    assert "interrupted (signal 2)" in stdout
    assert wait_gone(read_pids(out)) == []
    assert _exp(tmp_path, "z0_gas1_tmbspg2")["status"] == "running"  # never taken for a finished result
