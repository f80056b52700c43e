"""Keys the effect tables declare "applied" change what a real engine does, and "no effect" keys are said out
loud when the engine starts (Note [key effects] in ds_engine.config.effects). One process, no process group:
each test builds the engine twice, with the key at its default and at another value, and observes the
difference."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from ds_engine import initialize
from ds_engine.config.effects import tables

SGD = {"type": "SGD", "params": {"lr": 0.5}}


def _engine(**config: Any):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    engine, *_ = initialize(
        model=model,
        config={"train_micro_batch_size_per_gpu": 2, "optimizer": SGD, **config},
        dist_init_required=False,
    )
    return engine


def _train(engine, steps: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    for _ in range(steps):
        x, y = torch.randn(2, 6, generator=gen), torch.randn(2, 3, generator=gen)
        engine.backward(torch.nn.functional.mse_loss(engine(x).float(), y))
        engine.step()
    return torch.cat([p.detach().float().flatten() for p in engine.module.parameters()])


def _applied(path: str) -> None:
    """The key is declared applied (this file samples the table; the table test covers every key)."""
    *section, key = path.split(".")
    found = [t for p, t in tables().values() if p == ".".join(section)]
    assert found and found[0][key].kind == "applied", path


def _messages(log) -> list[str]:
    return [r.getMessage() for r in log.records]


def test_steps_per_print_logs_progress(config_log) -> None:
    _applied("steps_per_print")
    _train(_engine())
    assert not [m for m in _messages(config_log) if "skipped=" in m]
    config_log.clear()
    _train(_engine(steps_per_print=1))
    assert len([m for m in _messages(config_log) if "skipped=" in m]) == 2


def test_dump_state_prints_the_config(config_log) -> None:
    _applied("dump_state")
    _engine()
    assert not [m for m in _messages(config_log) if m.startswith("DeepSpeedEngine config:")]
    _engine(dump_state=True)
    assert [m for m in _messages(config_log) if m.startswith("DeepSpeedEngine config:")]


def test_wall_clock_breakdown_times_the_phases() -> None:
    _applied("wall_clock_breakdown")
    assert type(_engine().timers).__name__ == "NoopTimer"
    assert type(_engine(wall_clock_breakdown=True).timers).__name__ != "NoopTimer"


def test_dataloader_drop_last() -> None:
    _applied("dataloader_drop_last")
    data = torch.utils.data.TensorDataset(torch.arange(5.0))
    assert len(_engine().deepspeed_io(data)) == 3
    assert len(_engine(dataloader_drop_last=True).deepspeed_io(data)) == 2


def test_gradient_clipping_bounds_the_update() -> None:
    _applied("gradient_clipping")
    start = _train(_engine(), steps=0)
    free = _train(_engine(gradient_clipping=0.0), steps=1) - start
    clipped = _train(_engine(gradient_clipping=1e-3), steps=1) - start
    assert clipped.norm() == pytest.approx(0.5 * 1e-3, rel=1e-3)  # lr * clip
    assert free.norm() > 10 * clipped.norm()


def test_optimizer_params_reach_the_optimizer() -> None:
    _applied("optimizer.params")
    start = _train(_engine(), steps=0)
    half = _train(_engine(optimizer={"type": "SGD", "params": {"lr": 0.25}}), steps=1) - start
    full = _train(_engine(), steps=1) - start
    torch.testing.assert_close(full, 2 * half)


def test_torch_autocast_runs_forward_in_its_dtype() -> None:
    _applied("torch_autocast.enabled")
    x = torch.randn(2, 6)
    assert _engine()(x).dtype == torch.float32
    assert _engine(torch_autocast={"enabled": True, "dtype": "bfloat16"})(x).dtype == torch.bfloat16


def test_csv_monitor_writes_where_the_section_says(tmp_path) -> None:
    for key in ("enabled", "output_path", "job_name"):
        _applied(f"csv_monitor.{key}")
    _train(_engine())
    assert not any(tmp_path.iterdir())
    _train(_engine(csv_monitor={"enabled": True, "output_path": str(tmp_path), "job_name": "run7"}))
    assert (tmp_path / "run7" / "Train_Samples_train_loss.csv").is_file()


def test_flops_profiler_writes_its_output_file(tmp_path) -> None:
    _applied("flops_profiler.output_file")
    out = tmp_path / "profile.txt"
    _train(_engine(flops_profiler={"output_file": str(out), "profile_step": 1}))
    assert not out.exists()  # not enabled: the section's other keys do nothing
    _train(_engine(flops_profiler={"enabled": True, "output_file": str(out), "profile_step": 1}))
    assert "params" in out.read_text().lower()


# A no-effect key of each kind of section, set at once: the engine's start logs each one with its reason.
NO_EFFECT_AT_START = {
    "zero_allow_untested_optimizer": True,
    "checkpoint": {"load_universal": True, "writer": {"decoupled": True}},
    "pipeline": {"pipe_partitioned": False},
    "compile": {"free_activation": True},
    "aio": {"single_submit": True},
    "bf16": {"immediate_grad_update": True},
}
EXPECTED = [
    "zero_allow_untested_optimizer",
    "checkpoint.load_universal",
    "checkpoint.writer.decoupled",
    "pipeline.pipe_partitioned",
    "compile.free_activation",
    "aio.single_submit",
    "bf16.immediate_grad_update",
]


def test_no_effect_keys_are_logged_once_at_engine_start(config_log) -> None:
    engine = _engine(**NO_EFFECT_AT_START)
    warnings = [r.getMessage() for r in config_log.records if r.levelno == logging.WARNING]
    for key in EXPECTED:
        said = [m for m in warnings if f"'{key}' has no effect here: " in m]
        assert len(said) == 1, (key, warnings)
    _train(engine)  # and the engine still trains
