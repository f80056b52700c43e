"""The engine's side of autotuning (Note [autotuning protocol]) on real gloo ranks: it measures the
profile window, writes the metric or model-info file on rank 0, and ends every rank."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist

from ds_accel import get_accelerator
from ds_comm.testing import run_distributed
from ds_engine import initialize
from ds_engine.autotuning_probe import SavedTensorCounter
from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def _run(autotuning: dict, stage: int = 1, max_steps: int = 20) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 2,
        "zero_optimization": {"stage": stage},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
        "autotuning": autotuning,
    }
    engine, *_ = initialize(model=_model(), config=config)
    forwards = 0
    try:
        for _ in range(max_steps * 2):
            loss = engine(torch.randn(4, 8)).pow(2).mean()
            forwards += 1
            engine.backward(loss)
            engine.step()
    except SystemExit as stop:
        ended = {
            "ended": stop.code,
            "steps": engine.global_steps,
            "forwards": forwards,
            "group_closed": not dist.is_initialized(),
        }
        # The run took its process group down, as an experiment does before exiting; the test harness
        # tears one down after this function returns, so give it a private single-rank one.
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        return ended
    return {"ended": None, "steps": engine.global_steps, "forwards": forwards}


@pytest.mark.timeout(180)
def test_metrics_cover_the_profile_window_then_the_run_ends(tmp_path):
    path = tmp_path / "metrics.json"
    section = {"enabled": True, "start_profile_step": 2, "end_profile_step": 4, "metric_path": str(path)}
    ranks = run_distributed(_run, world_size=2, args=(section,))
    assert (
        ranks == [{"ended": 0, "steps": 5, "forwards": 10, "group_closed": True}] * 2
    )  # ends right after step end_profile_step + 1
    metrics = json.loads(path.read_text())
    assert (metrics["profiled_steps"], metrics["train_batch_size"], metrics["zero_stage"]) == (3, 16, 1)
    assert (metrics["train_micro_batch_size_per_gpu"], metrics["gradient_accumulation_steps"]) == (4, 2)
    assert metrics["throughput"] == pytest.approx(16 * 1e3 / metrics["latency"])
    assert metrics["latency"] > 0 and metrics["flops"] == metrics["FLOPS_per_gpu"] > 0
    assert metrics["num_params"] == sum(p.numel() for p in _model().parameters())
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # written atomically, once


@pytest.mark.timeout(180)
def test_window_from_the_first_forward(tmp_path):
    path = tmp_path / "m.json"
    section = {"enabled": True, "start_profile_step": 0, "end_profile_step": 1, "metric_path": str(path)}
    assert (
        run_distributed(_run, world_size=2, args=(section, 0))
        == [{"ended": 0, "steps": 2, "forwards": 4, "group_closed": True}] * 2
    )
    assert json.loads(path.read_text())["profiled_steps"] == 2


@pytest.mark.timeout(180)
def test_model_info_after_the_first_forward(tmp_path):
    path = tmp_path / "info" / "model_info.json"
    section = {"enabled": True, "model_info": {"profile": True}, "model_info_path": str(path)}
    # The run ends inside the first forward: it never returns to the script.
    assert (
        run_distributed(_run, world_size=2, args=(section, 2))
        == [{"ended": 0, "steps": 0, "forwards": 0, "group_closed": True}] * 2
    )
    info = json.loads(path.read_text())
    assert info["num_params"] == info["trainable_num_params"] == 8 * 32 + 32 + 32 * 4 + 4
    # Saved for backward: the input (4 x 8 floats) and the ReLU output (4 x 32 floats), parameters excluded.
    assert info["activation_mem_per_gpu"] == 4 * (4 * 8 + 4 * 32)
    assert info["train_micro_batch_size_per_gpu"] == 4
    assert info["memory_per_device"] == get_accelerator().total_memory() // 2  # the node's 2 ranks share RAM


@pytest.mark.timeout(180)
def test_disabled_section_trains_normally(tmp_path):
    assert run_distributed(_run, world_size=1, args=({"enabled": False}, 1, 3)) == [
        {"ended": None, "steps": 3, "forwards": 6}
    ]
    assert os.listdir(tmp_path) == []


def test_saved_tensor_counter_counts_each_storage_once():
    layer = torch.nn.Linear(16, 16)
    counter = SavedTensorCounter(list(layer.parameters()))
    x = torch.randn(3, 16, requires_grad=True)
    with counter.counting():
        y = layer(x)
        z = y * y  # saves y twice (same storage)
    z.sum().backward()
    assert counter.nbytes == x.nbytes + y.nbytes


def test_profile_window_is_validated():
    with pytest.raises(DeepSpeedConfigError, match="end_profile_step 1 is before start_profile_step 3"):
        DeepSpeedConfig(
            {"train_batch_size": 1, "autotuning": {"start_profile_step": 3, "end_profile_step": 1}},
            world_size=1,
        )
    with pytest.raises(DeepSpeedConfigError, match="'autotuning.memory_per_device'"):
        DeepSpeedConfig({"train_batch_size": 1, "autotuning": {"memory_per_device": 0}}, world_size=1)
