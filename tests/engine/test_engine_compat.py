"""The engine's names at DeepSpeed's paths, as clients import them."""

from __future__ import annotations

import torch

import deepspeed


def test_runtime_paths() -> None:
    from deepspeed.runtime.base_optimizer import DeepSpeedOptimizer, ZeROOptimizer
    from deepspeed.runtime.config import DeepSpeedConfig, DeepSpeedConfigError
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.lr_schedules import VALID_LR_SCHEDULES, WarmupLR

    assert DeepSpeedEngine is deepspeed.DeepSpeedEngine and DeepSpeedConfig is deepspeed.DeepSpeedConfig
    assert issubclass(DeepSpeedConfigError, ValueError) and "WarmupLR" in VALID_LR_SCHEDULES
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=torch.nn.Linear(3, 3),
        dist_init_required=False,
        config={
            "train_batch_size": 1,
            "optimizer": {"type": "Adam", "params": {"lr": 0.1}},
            "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 2}},
        },
    )
    assert isinstance(engine, DeepSpeedEngine) and isinstance(optimizer, DeepSpeedOptimizer)
    assert isinstance(optimizer, ZeROOptimizer) and isinstance(scheduler, WarmupLR)
    assert type(scheduler).__name__ in VALID_LR_SCHEDULES  # what Hugging Face compares
    sig = __import__("inspect").signature(engine.save_checkpoint)
    assert "exclude_frozen_parameters" in sig.parameters  # transformers inspects it


def test_tput_timer_measures_samples_per_second() -> None:
    """DeepSpeed-Chat reads ``engine.tput_timer``: it counts optimizer steps and times them after warm-up."""
    from deepspeed.utils.timer import ThroughputTimer

    engine, *_ = deepspeed.initialize(
        model=torch.nn.Linear(3, 3),
        dist_init_required=False,
        config={
            "train_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "optimizer": {"type": "Adam", "params": {"lr": 0.1}},
        },
    )
    assert isinstance(engine.tput_timer, ThroughputTimer)
    for _ in range(10):
        engine.backward(engine(torch.randn(2, 3)).sum())
        engine.step()
    assert engine.tput_timer.global_step_count == 5 and engine.tput_timer.micro_step_count == 10
    assert engine.tput_timer.avg_samples_per_sec() > 0
