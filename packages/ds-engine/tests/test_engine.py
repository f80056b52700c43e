"""The engine in one process (no process group: ``dist_init_required=False``).

Multi-rank numerics and resumption run on real gloo ranks in the repository's ``tests/engine``.
"""

from __future__ import annotations

import argparse
import logging
import os

import pytest
import torch

from ds_engine import DeepSpeedConfigError, DeepSpeedEngine, add_config_arguments, initialize
from ds_engine.lr_schedules import WarmupDecayLR
from ds_zero import ZeROOptimizer


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + i)
    return torch.randn(2, 6, generator=gen), torch.randn(2, 3, generator=gen)


def _engine(config: dict, model: torch.nn.Module | None = None, **kw):
    return initialize(model=model or _model(), config=config, dist_init_required=False, **kw)


ADAMW = {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.01}}


def test_initialize_returns_engine_optimizer_loader_scheduler() -> None:
    engine, opt, loader, sched = _engine(
        {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3, "optimizer": ADAMW}
    )
    assert isinstance(engine, DeepSpeedEngine) and isinstance(opt, ZeROOptimizer) and opt is engine.optimizer
    assert loader is None and sched is None
    assert engine.get_batch_info() == (6, 2, 3)
    assert engine.zero_optimization_stage() == 0 and engine.device == torch.device("cpu")
    assert engine.config["optimizer"] == ADAMW and engine.local_rank == 0
    assert engine.get_lr() == [1e-2] and engine.gradient_clipping() == 1.0
    assert isinstance(opt.optimizer, torch.optim.Optimizer) and opt.param_groups is opt.optimizer.param_groups


@pytest.mark.faults
def test_zero_grad_takes_torch_modules_set_to_none() -> None:
    # The engine is a torch Module: zero_grad(set_to_none=False), torch's signature, zeroes in place
    # (it raised TypeError before), and the default still drops the gradients.
    engine, *_ = _engine({"train_micro_batch_size_per_gpu": 2, "optimizer": ADAMW})
    x, y = _batch(0)
    engine.backward(torch.nn.functional.mse_loss(engine(x), y))
    engine.zero_grad(set_to_none=False)
    grads = [p.grad for p in engine.module.parameters()]
    assert all(g is not None and not g.any() for g in grads)
    engine.zero_grad()
    assert all(p.grad is None for p in engine.module.parameters())


def test_accumulation_boundaries_and_counters() -> None:
    engine, *_ = _engine(
        {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3, "optimizer": ADAMW}
    )
    boundaries = []
    for i in range(6):
        boundaries.append(engine.is_gradient_accumulation_boundary())
        x, y = _batch(i)
        engine.backward(torch.nn.functional.mse_loss(engine(x), y))
        engine.step()
    assert boundaries == [False, False, True, False, False, True]
    assert (engine.global_steps, engine.global_samples, engine.micro_steps, engine.skipped_steps) == (
        2,
        12,
        6,
        0,
    )
    engine.set_gradient_accumulation_boundary(True)
    assert engine.is_gradient_accumulation_boundary()


def test_matches_plain_pytorch_with_accumulation_clipping_and_schedule() -> None:
    cfg = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 2,
        "gradient_clipping": 0.2,
        "optimizer": ADAMW,
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "total_num_steps": 6,
                "warmup_num_steps": 2,
                "warmup_max_lr": 1e-2,
                "warmup_type": "linear",
            },
        },
    }
    engine, *_ = _engine(cfg)
    ref = _model()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.01)
    ref_sched = WarmupDecayLR(
        ref_opt, total_num_steps=6, warmup_num_steps=2, warmup_max_lr=1e-2, warmup_type="linear"
    )
    for step in range(5):
        for k in range(2):
            x, y = _batch(2 * step + k)
            torch.nn.functional.mse_loss(ref(x), y).div(2).backward()
            engine.backward(torch.nn.functional.mse_loss(engine(x), y))
            engine.step()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.2)
        ref_opt.step()
        ref_opt.zero_grad()
        ref_sched.step()
        assert engine.get_lr() == pytest.approx(ref_sched.get_last_lr())
    for a, b in zip(ref.parameters(), engine.module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_fp16_forced_overflow_skips_step_and_schedule() -> None:
    cfg = {
        "train_batch_size": 2,
        "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
        "fp16": {"enabled": True, "initial_scale_power": 8, "hysteresis": 2, "loss_scale_window": 2},
        "scheduler": {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": 0.05,
                "warmup_max_lr": 0.1,
                "warmup_num_steps": 10,
                "warmup_type": "linear",
            },
        },
    }
    engine, *_ = _engine(cfg)
    assert next(engine.module.parameters()).dtype == torch.float16
    scales, lrs, skipped = [], [], []
    # overflow, overflow, clean, clean, clean, overflow
    for i, poison in enumerate([True, True, False, False, False, True]):
        before = [p.detach().clone() for p in engine.module.parameters()]
        x, y = _batch(i)
        loss = torch.nn.functional.mse_loss(engine(x.half()).float(), y)
        engine.backward(loss * float("inf") if poison else loss)
        engine.step()
        changed = any(not torch.equal(p, b) for p, b in zip(engine.module.parameters(), before))
        assert changed is (not poison) and engine.was_step_applied() is (not poison)
        scales.append(engine.loss_scale())
        lrs.append(engine.get_lr()[0])
        skipped.append(engine.skipped_steps)
    # hysteresis 2: the first overflow keeps 256, the second halves; window 2 doubles after two clean steps
    assert scales == [256, 128, 128, 128, 256, 256]
    # the schedule moves on applied steps only: min + (max - min) * n / 10 after the n-th applied step (from 0)
    assert lrs == pytest.approx([0.05, 0.05, 0.05, 0.055, 0.06, 0.06])
    assert skipped == [1, 2, 2, 2, 2, 3] and engine.global_steps == 6


def test_no_sync_context() -> None:
    engine, *_ = _engine({"train_batch_size": 2, "optimizer": ADAMW})
    x, y = _batch(0)
    with engine.no_sync():
        engine.backward(torch.nn.functional.mse_loss(engine(x), y))
        with pytest.raises(RuntimeError, match="inside engine.no_sync"):
            engine.step()
    engine.step()
    assert engine.global_steps == 1


def test_client_optimizer_callable_and_scheduler_callable() -> None:
    model = _model()
    engine, opt, _, sched = _engine(
        {"train_batch_size": 2},
        model=model,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5),
    )
    assert isinstance(opt.optimizer, torch.optim.SGD) and isinstance(sched, torch.optim.lr_scheduler.StepLR)
    x, y = _batch(0)
    engine.backward(torch.nn.functional.mse_loss(engine(x), y))
    engine.step()
    assert engine.get_lr() == [0.25]


def test_client_optimizer_wins_over_config(caplog: pytest.LogCaptureFixture) -> None:
    model = _model()
    client = torch.optim.SGD(model.parameters(), lr=0.3)
    engine, opt, _, _ = _engine({"train_batch_size": 2, "optimizer": ADAMW}, model=model, optimizer=client)
    assert opt.optimizer is client


def test_training_data_becomes_a_distributed_loader() -> None:
    data = torch.utils.data.TensorDataset(torch.randn(10, 6), torch.randn(10, 3))
    engine, _, loader, _ = _engine(
        {"train_micro_batch_size_per_gpu": 4, "optimizer": ADAMW}, training_data=data
    )
    batches = list(loader)
    assert len(loader) == 3 and [b[0].shape[0] for b in batches] == [4, 4, 2]
    again = list(loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))  # same order every pass, as DeepSpeed


def test_progress_line_and_csv_monitor(tmp_path) -> None:
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("ds_engine").addHandler(handler)
    try:
        engine, *_ = _engine(
            {
                "train_batch_size": 2,
                "steps_per_print": 2,
                "optimizer": ADAMW,
                "wall_clock_breakdown": True,
                "csv_monitor": {"enabled": True, "output_path": str(tmp_path), "job_name": "job"},
            }
        )
        for i in range(4):
            x, y = _batch(i)
            engine.backward(torch.nn.functional.mse_loss(engine(x), y))
            engine.step()
    finally:
        logging.getLogger("ds_engine").removeHandler(handler)
    lines = [r for r in records if r.startswith("step=")]
    assert [line.split()[0] for line in lines] == ["step=2", "step=4"]
    for key in ("loss=", "lr=[", "samples/s=", "TFLOP/s~", "skipped=0"):
        assert key in lines[0]
    timer_lines = [r for r in records if r.startswith("time (ms)")]
    assert len(timer_lines) == 2  # at steps_per_print, DeepSpeed's timer names
    for name in (
        "fwd_microstep",
        "bwd_microstep",
        "bwd_inner_microstep",
        "step_microstep",
        "| fwd:",
        "| bwd:",
        "| bwd_inner:",
        "| bwd_allreduce:",
        "| step:",
    ):
        assert name in timer_lines[0]
    csv = (tmp_path / "job" / "Train_Samples_train_loss.csv").read_text().splitlines()
    assert csv[0] == "step,train_loss" and len(csv) == 5  # DeepSpeed's header: the name's last part


def test_errors_at_initialize() -> None:
    with pytest.raises(DeepSpeedConfigError, match="'zero_optimization.stage' 0: offload needs ZeRO stage 1"):
        _engine(
            {
                "train_batch_size": 2,
                "optimizer": ADAMW,
                "zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}},
            }
        )
    with pytest.raises(DeepSpeedConfigError, match="'scheduler' needs an optimizer"):
        _engine({"train_batch_size": 2, "scheduler": {"type": "WarmupLR"}})
    with pytest.raises(ValueError, match="needs a model"):
        initialize(config={"train_batch_size": 2}, dist_init_required=False)
    engine, *_ = _engine({"train_batch_size": 2})
    with pytest.raises(RuntimeError, match="needs an optimizer"):
        engine.backward(torch.ones((), requires_grad=True))


def test_add_config_arguments_and_args_source(tmp_path) -> None:
    parser = add_config_arguments(argparse.ArgumentParser())
    path = tmp_path / "ds.json"
    path.write_text('{"train_batch_size": 2, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}}')
    args = parser.parse_args(["--deepspeed", "--deepspeed_config", str(path)])
    assert args.deepspeed and args.deepspeed_config == str(path)
    engine, *_ = initialize(args=args, model=_model(), dist_init_required=False)
    assert engine.get_lr() == [0.1]
    with pytest.raises(DeepSpeedConfigError, match="both as args.deepspeed_config"):
        initialize(args=args, model=_model(), config={"train_batch_size": 2}, dist_init_required=False)


def test_auto_cast_and_attribute_forwarding() -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)
            self.answer = 42

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.dtype == torch.float16
            return self.lin(x)

    engine, *_ = _engine(
        {"train_batch_size": 1, "optimizer": ADAMW, "fp16": {"enabled": True, "auto_cast": True}}, model=Net()
    )
    assert engine(torch.randn(1, 4)).dtype == torch.float16
    assert engine.answer == 42


def test_environment_is_untouched_without_a_process_group() -> None:
    _engine({"train_batch_size": 2, "optimizer": ADAMW})
    assert not torch.distributed.is_initialized()
    assert "MASTER_PORT" not in os.environ or os.environ.get(
        "MASTER_PORT"
    )  # nothing asserted beyond no group


def test_tensorboard_needs_its_package() -> None:
    import importlib.util

    cfg = {
        "train_batch_size": 2,
        "optimizer": ADAMW,
        "tensorboard": {"enabled": True, "output_path": "/tmp/x"},
    }
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(DeepSpeedConfigError, match="'tensorboard.enabled' needs the tensorboard package"):
            _engine(cfg)
    else:  # pragma: no cover - depends on the environment
        engine, *_ = _engine(cfg)
        assert engine.monitor.tb_monitor is not None
