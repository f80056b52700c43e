"""Checkpoints: DeepSpeed's layout, atomic writes, safe loads, resumption, and the rank rendezvous."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import pytest
import torch

import ds_comm
from ds_comm.testing import run_distributed
from ds_engine import initialize
from ds_engine.checkpoint import (
    CheckpointRendezvousError,
    UnsafeCheckpointError,
    UnsafeCheckpointValue,
    atomic_torch_save,
    atomic_write_text,
    safe_load,
)

CONFIG = {
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 2,
    "gradient_clipping": 0.5,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 4, "warmup_max_lr": 1e-2}},
}


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _engine(config: dict = CONFIG, seed: int = 0, **kw):
    engine, *_ = initialize(model=_model(seed), config=config, dist_init_required=False, **kw)
    return engine


def _train(engine, steps: int) -> list[float]:
    losses = []
    for _ in range(steps * engine.gradient_accumulation_steps()):
        gen = torch.Generator().manual_seed(engine.micro_steps)  # data follows the restored counters
        x, y = torch.randn(2, 6, generator=gen), torch.randn(2, 3, generator=gen)
        if engine.fp16_enabled():
            x = x.half()
        loss = torch.nn.functional.mse_loss(engine(x).float(), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def test_layout_and_keys(tmp_path) -> None:
    engine = _engine()
    _train(engine, 3)
    engine.save_checkpoint(str(tmp_path), client_state={"epoch": 7, "note": "hi"})
    assert (tmp_path / "latest").read_text() == "global_step3"
    files = sorted(os.listdir(tmp_path / "global_step3"))
    assert files == ["ds_manifest.json", "mp_rank_00_model_states.pt"]  # no temporary files left behind
    state = safe_load(str(tmp_path / "global_step3" / "mp_rank_00_model_states.pt"))
    for key in (
        "module",
        "optimizer",
        "lr_scheduler",
        "global_steps",
        "global_samples",
        "skipped_steps",
        "dp_world_size",
        "mp_world_size",
        "ds_config",
        "ds_version",
        "ds_manifest",
        "epoch",
        "note",
    ):
        assert key in state, key
    assert state["global_steps"] == 3 and state["global_samples"] == 12 and state["dp_world_size"] == 1
    assert (
        state["ds_config"] == CONFIG and state["optimizer"]["zero_stage"] == 0
    )  # one slice format for all stages
    assert {piece["key"] for piece in state["optimizer"]["slices"]} == set(state["module"])
    assert state["lr_scheduler"] == {"last_batch_iteration": 2}


def test_resume_is_bit_exact(tmp_path) -> None:
    straight = _engine()
    expected = _train(straight, 6)
    first = _engine()
    head = _train(first, 3)
    first.save_checkpoint(str(tmp_path), tag="mid", client_state={"step": 3})
    second = _engine(seed=123)  # different start: everything must come from the checkpoint
    path, client = second.load_checkpoint(str(tmp_path))
    assert path.endswith(os.path.join("mid", "mp_rank_00_model_states.pt")) and client == {"step": 3}
    assert (second.global_steps, second.global_samples, second.micro_steps) == (3, 12, 0)
    second.micro_steps = first.micro_steps  # the data stream is the client's business: resume it
    tail = _train(second, 3)
    assert head + tail == expected
    for a, b in zip(straight.module.parameters(), second.module.parameters()):
        assert torch.equal(a, b)
    assert second.get_lr() == straight.get_lr()


def test_fp16_resume_restores_masters_and_loss_scale(tmp_path) -> None:
    config = {**CONFIG, "fp16": {"enabled": True, "initial_scale_power": 6}}
    straight = _engine(config)
    expected = _train(straight, 4)
    first = _engine(config)
    _train(first, 2)
    first.save_checkpoint(str(tmp_path))
    second = _engine(config, seed=9)
    second.load_checkpoint(str(tmp_path))
    assert second.loss_scale() == first.loss_scale()
    second.micro_steps = first.micro_steps
    assert _train(second, 2) == expected[4:]
    for a, b in zip(straight.optimizer.param_groups[0]["params"], second.optimizer.param_groups[0]["params"]):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def test_load_module_only_and_without_optimizer_state(tmp_path) -> None:
    engine = _engine()
    _train(engine, 2)
    engine.save_checkpoint(str(tmp_path))
    fresh = _engine(seed=5)
    path, client = fresh.load_checkpoint(str(tmp_path), load_module_only=True)
    assert path is not None and client == {} and fresh.global_steps == 0
    for a, b in zip(engine.module.parameters(), fresh.module.parameters()):
        assert torch.equal(a, b)
    assert len(fresh.optimizer.optimizer.state) == 0


def test_custom_load_fn_replaces_the_module_load(tmp_path) -> None:
    engine = _engine()
    _train(engine, 2)
    engine.save_checkpoint(str(tmp_path))
    seen = []

    def halve_into(src: dict, dst: torch.nn.Module) -> None:  # DeepSpeed's keyword names
        seen.append(sorted(src))
        dst.load_state_dict({k: v / 2 for k, v in src.items()})

    fresh = _engine(seed=5)
    fresh.load_checkpoint(str(tmp_path), load_optimizer_states=False, custom_load_fn=halve_into)
    assert seen == [sorted(engine.module.state_dict())]
    for a, b in zip(engine.module.parameters(), fresh.module.parameters()):
        assert torch.equal(a / 2, b)


def test_missing_checkpoint_is_a_warning(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    engine = _engine()
    logger = logging.getLogger("ds_engine")
    logger.propagate = True
    try:
        with caplog.at_level(logging.WARNING, logger="ds_engine"):
            assert engine.load_checkpoint(str(tmp_path / "nothing")) == (None, None)
            assert engine.load_checkpoint(str(tmp_path), tag="global_step9") == (None, None)
    finally:
        logger.propagate = False
    assert "latest" in caplog.text and "global_step9" in caplog.text


def test_unsafe_client_state_is_refused_before_writing(tmp_path) -> None:
    engine = _engine()

    class Custom:
        pass

    with pytest.raises(UnsafeCheckpointValue, match=r"client_state\['obj'\]\[0\] holds a .*Custom"):
        engine.save_checkpoint(str(tmp_path), client_state={"obj": [Custom()]})
    assert not (tmp_path / "latest").exists()


def test_safe_load_refuses_code(tmp_path) -> None:
    path = str(tmp_path / "evil.pt")
    torch.save({"x": argparse.Namespace(planted=True)}, path)  # any class: unpickling would run its code
    with pytest.raises(UnsafeCheckpointError, match="evil.pt holds objects that cannot be loaded safely"):
        safe_load(path)


def test_atomic_write_replaces_or_leaves_the_old_file(tmp_path) -> None:
    path = str(tmp_path / "latest")
    atomic_write_text(path, "global_step1")

    class Boom(RuntimeError):
        pass

    def failing(_handle) -> None:
        raise Boom

    from ds_engine.checkpoint.files import atomic_write_bytes

    with pytest.raises(Boom):
        atomic_write_bytes(path, failing)
    assert Path(path).read_text() == "global_step1" and os.listdir(tmp_path) == ["latest"]
    atomic_torch_save({"a": torch.ones(2)}, str(tmp_path / "s.pt"))
    assert torch.equal(safe_load(str(tmp_path / "s.pt"))["a"], torch.ones(2))


def test_exclude_frozen_parameters(tmp_path) -> None:
    model = _model()
    model[0].weight.requires_grad_(False)
    engine, *_ = initialize(model=model, config=CONFIG, dist_init_required=False)
    engine.save_checkpoint(str(tmp_path), exclude_frozen_parameters=True)
    module = safe_load(str(tmp_path / "global_step0" / "mp_rank_00_model_states.pt"))["module"]
    assert "0.weight" not in module and "0.bias" in module


# --- two ranks ----------------------------------------------------------------------------------------
def _save_on_rank0_only(tmp: str):
    config = {**CONFIG, "checkpoint": {"rendezvous_timeout": 3}}
    engine, *_ = initialize(model=_model(), config=config)
    outcome = None
    if ds_comm.get_rank() == 0:
        start = time.monotonic()
        try:
            engine.save_checkpoint(tmp)
        except CheckpointRendezvousError as exc:
            outcome = (str(exc), time.monotonic() - start)
    ds_comm.barrier()  # rank 1 went straight on to its next collective; the training group still works
    return outcome, os.path.exists(os.path.join(tmp, "latest"))


def _save_with_different_tags(tmp: str):
    config = {**CONFIG, "checkpoint": {"tag_validation": "Fail"}}
    engine, *_ = initialize(model=_model(), config=config)
    try:
        engine.save_checkpoint(tmp, tag=f"tag{ds_comm.get_rank()}")
    except CheckpointRendezvousError as exc:
        return str(exc)
    return None


@pytest.mark.timeout(120)
def test_save_on_some_ranks_fails_within_the_timeout(tmp_path) -> None:
    (message, elapsed), latest = run_distributed(_save_on_rank0_only, world_size=2, args=(str(tmp_path),))[0]
    assert "save_checkpoint: not every rank reached it within 3 s" in message
    assert elapsed < 20 and not latest


@pytest.mark.timeout(120)
def test_differing_tags_fail_when_asked(tmp_path) -> None:
    results = run_distributed(_save_with_different_tags, world_size=2, args=(str(tmp_path),))
    assert all(r is not None and "differs across ranks" in r for r in results)
    assert not (tmp_path / "latest").exists()
