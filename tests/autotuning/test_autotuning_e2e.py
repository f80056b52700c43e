"""``deepspeed --autotuning tune|run`` for real: a user's script (scripts/train_tiny.py) on 2 CPU ranks,
each experiment measured by the engine. Tune explores ZeRO stages 0-3 x three micro batch sizes, prunes
what the ZeRO memory formulas rule out, records a failing experiment and goes on, and writes the best
config; run then trains with it. The tuning process itself never imports torch."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ds_engine.autotuning_probe import SavedTensorCounter

HERE = Path(__file__).parent
SCRIPT = HERE / "scripts" / "train_tiny.py"
LISTING = (
    HERE.parent / "launch" / "scripts" / "launch_listing_modules.py"
)  # runs the CLI, lists torch modules
DEEPSPEED = [sys.executable, "-c", "from ds_launch.cli import main; main()"]
STAGES, MICRO_BATCHES = (0, 1, 2, 3), (1, 2, 4)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _user_module():
    spec = importlib.util.spec_from_file_location("train_tiny", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _memory_budget() -> tuple[int, int, int]:
    """(parameters, activation bytes per sample, budget): the budget lets stage 0 (16 bytes per parameter in
    fp32) hold 3 samples of activations, so its micro batch 4 is pruned while stages 1-3 fit it."""
    user = _user_module()
    model = user.build_model()
    params = sum(p.numel() for p in model.parameters())
    counter = SavedTensorCounter(list(model.parameters()))
    with counter.counting():
        model(user.make_batch(1, 0)[0])
    activations = counter.nbytes
    assert activations * 4 < params * 4  # stage 1 saves 4 bytes per parameter: more than 4 samples need
    return params, activations, 16 * params + 3 * activations


def _write_config(tmp_path: Path, budget: int) -> None:
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
        "autotuning": {
            "enabled": True,
            "overwrite": False,
            "start_profile_step": 2,
            "end_profile_step": 6,
            "max_train_micro_batch_size_per_gpu": 4,
            "memory_per_device": budget,
        },
    }
    (tmp_path / "ds_config.json").write_text(json.dumps(config))


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, HOME=str(tmp_path), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", **extra)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _args(mode: str) -> list[str]:
    return [
        "--autotuning",
        mode,
        "--num_gpus",
        "2",
        "--master_port",
        str(_free_port()),
        str(SCRIPT),
        "--deepspeed",
        "--deepspeed_config",
        "ds_config.json",
        "--steps",
        "10",
    ]


@pytest.mark.timeout(600)
def test_tune_then_run_with_the_best_config(tmp_path):
    params, activations, budget = _memory_budget()
    _write_config(tmp_path, budget)
    env = _env(tmp_path, AT_FAIL="1:2", AT_RECORD=str(tmp_path / "trained.json"))
    modules = tmp_path / "modules.json"
    tune = subprocess.run(
        [sys.executable, str(LISTING), str(modules), *_args("tune")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert tune.returncode == 0, tune.stdout[-4000:] + tune.stderr[-4000:]
    assert json.loads(modules.read_text()) == []  # the tuning process never imported torch
    results = tmp_path / "autotuning_results"
    exp = lambda name: json.loads((results / name / "exp.json").read_text())  # noqa: E731

    # The profiling run measured the user's model.
    info = json.loads((results / "profile_model_info" / "model_info.json").read_text())
    assert (info["num_params"], info["activation_mem_per_gpu"]) == (params, activations)

    # Every stage, three micro batch sizes; stage 0's largest pruned by the memory formulas, never launched.
    names = {f"z{s}_gas1_tmbspg{m}": (s, m) for s in STAGES for m in MICRO_BATCHES}
    pruned = exp("z0_gas1_tmbspg4")
    assert pruned["status"] == "pruned" and "per rank by the ZeRO memory formulas" in pruned["error"]
    assert not (tmp_path / "autotuning_exps" / "z0_gas1_tmbspg4.json").exists()
    assert "pruned z0_gas1_tmbspg4: needs " in tune.stdout

    # The experiment made to fail is reported and skipped; stage 3 runs (or fails, recorded) like the others.
    failed = exp("z1_gas1_tmbspg2")
    assert (
        failed["status"] == "failed"
        and "RuntimeError: deliberate failure at stage:micro batch 1:2" in failed["error"]
    )
    assert "z1_gas1_tmbspg2: FAILED: exit code 1: RuntimeError: deliberate failure" in tune.stdout
    launched = {n: exp(n) for n in names if n != "z0_gas1_tmbspg4"}
    assert all(e["status"] in ("ok", "failed") for e in launched.values())
    ok = {n for n, e in launched.items() if e["status"] == "ok"}
    assert ok >= {n for n in names if names[n][0] in (0, 2)} - {"z0_gas1_tmbspg4"}
    assert {names[n][1] for n in ok if names[n][0] == 2} == set(MICRO_BATCHES)

    # Each measured experiment: the engine's metrics over the profile window, with the experiment's settings.
    throughput = {}
    for name in ok:
        metrics = json.loads((results / name / "metrics.json").read_text())
        stage, micro = names[name]
        assert (metrics["zero_stage"], metrics["train_micro_batch_size_per_gpu"]) == (stage, micro)
        assert (metrics["profiled_steps"], metrics["world_size"], metrics["train_batch_size"]) == (
            5,
            2,
            2 * micro,
        )
        throughput[name] = metrics["throughput"]
        assert (tmp_path / "autotuning_exps" / f"{name}.json").exists()
        assert (results / name / "cmd.txt").read_text().startswith("deepspeed --num_gpus 2 --master_port ")

    # Live progress, the final table, and the best config: the best measured throughput of all experiments.
    assert "experiment 1/" in tune.stdout and "| best so far: " in tune.stdout
    best = max(throughput, key=throughput.get)
    assert f"| global       | {len(launched)}" in tune.stdout and tune.stdout.count(best) >= 2
    optimal = json.loads((results / "ds_config_optimal.json").read_text())
    used = json.loads((results / best / "ds_config.json").read_text())
    assert optimal == {k: v for k, v in used.items() if k != "autotuning"}
    assert not (tmp_path / "trained.json").exists()  # tune does not train

    # run: the finished experiments are reused (overwrite: false), then training runs with the best config.
    run = subprocess.run(
        [*DEEPSPEED, *_args("run")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert run.stdout.count("(previous result reused)") == len(launched)
    trained = json.loads((tmp_path / "trained.json").read_text())
    stage, micro = names[best]
    assert trained == {
        **trained,
        "zero_stage": stage,
        "train_micro_batch_size_per_gpu": micro,
        "train_batch_size": 2 * micro,
        "global_steps": 10,
        "world_size": 2,
    }
