"""An elastic job restarted at another world size keeps its global batch: real gloo ranks, world size 1
then 2, with a checkpoint in between (the way a restart after scaling sees it)."""

from __future__ import annotations

import pytest
import torch

from ds_comm.testing import run_distributed
from ds_engine import initialize

CONFIG = {
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
    "elasticity": {
        "enabled": True,
        "max_train_batch_size": 16,
        "micro_batch_sizes": [2, 4],
        "min_gpus": 1,
        "max_gpus": 4,
        "version": 0.1,
    },
}


def _train(save_dir: str, steps: int, resume: bool) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    engine, *_ = initialize(model=model, config=CONFIG)
    if resume:
        engine.load_checkpoint(save_dir)
    start = engine.global_steps
    for micro in range(steps * engine.gradient_accumulation_steps()):
        gen = torch.Generator().manual_seed(1000 * engine.global_rank + micro)
        x = torch.randn(engine.train_micro_batch_size_per_gpu(), 6, generator=gen)
        engine.backward(torch.nn.functional.mse_loss(engine(x), x[:, :3]))
        engine.step()
    engine.save_checkpoint(save_dir)
    return {
        "batch": (
            engine.train_batch_size(),
            engine.train_micro_batch_size_per_gpu(),
            engine.gradient_accumulation_steps(),
        ),
        "start": start,
        "steps": engine.global_steps,
        "samples": engine.global_samples,
        "world": engine.world_size,
    }


@pytest.mark.timeout(240)
def test_restart_at_another_world_size_keeps_train_batch_size(tmp_path):
    (first,) = run_distributed(_train, world_size=1, args=(str(tmp_path), 2, False))
    assert first == {"batch": (16, 4, 4), "start": 0, "steps": 2, "samples": 32, "world": 1}
    second = run_distributed(_train, world_size=2, args=(str(tmp_path), 1, True))
    for rank in second:
        assert rank == {"batch": (16, 4, 2), "start": 2, "steps": 3, "samples": 48, "world": 2}
