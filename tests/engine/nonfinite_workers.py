"""Rank functions for the non-finite-gradient and call-order tests (spawned ranks import them by name).

Every case trains the same tiny model on 2 ranks for ``STEPS`` optimizer steps. A *poisoned* run makes
rank 1's loss NaN or Inf at step ``BAD``; its twin skips that step's batch altogether. A skipped step
must leave no trace (weights, Adam moments and step counts, LR schedule), so the two end bit-identical.
"""

from __future__ import annotations

import logging

import torch

import deepspeed
from ds_engine.step_guard import NonFiniteGradientsError, TrainingCallError

MICRO, STEPS, BAD = 2, 5, 2
PRECISIONS = {
    "fp32": {},
    "bf16": {"bf16": {"enabled": True}},
    "fp16": {"fp16": {"enabled": True, "initial_scale_power": 8}},
}


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def config(stage: int, precision: str, **extra) -> dict:
    return {
        "train_micro_batch_size_per_gpu": MICRO,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.01}},
        "scheduler": {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-2, "warmup_num_steps": 10},
        },
        "zero_optimization": {"stage": stage, "reduce_bucket_size": 40},
        **PRECISIONS[precision],
        **extra,
    }


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    rank = deepspeed.comm.get_rank()
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(MICRO, 6, generator=gen), torch.randint(0, 3, (MICRO,), generator=gen)


def _loss(engine, step: int) -> torch.Tensor:
    x, y = batch(step)
    dtype = next(engine.module.parameters()).dtype
    return torch.nn.functional.cross_entropy(engine(x.to(dtype)).float(), y)


def _run(stage: int, precision: str, steps: list[int], poison: str | None) -> dict:
    engine, *_ = deepspeed.initialize(model=make_model(), config=config(stage, precision))
    rank = deepspeed.comm.get_rank()
    for step in steps:
        loss = _loss(engine, step)
        if poison is not None and step == BAD and rank == 1:
            loss = loss * float(poison)
        engine.backward(loss)
        engine.step()
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        params = [p.detach().float().clone() for p in engine.module.parameters()]
    out = {
        "params": params,
        "skipped": engine.skipped_steps,
        "global_steps": engine.global_steps,
        "lr": engine.get_lr(),
    }
    engine.destroy()
    return out


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def poisoned_and_clean(stage: int) -> dict:
    """For each precision and poison: the poisoned run, its clean twin, and rank 0's skip warnings."""
    records = _Records()
    logging.getLogger("ds_engine").addHandler(records)
    out = {}
    for precision in PRECISIONS:
        for poison in ("nan", "inf"):
            records.messages.clear()
            poisoned = _run(stage, precision, list(range(STEPS)), poison)
            warnings = [m for m in records.messages if "skipped" in m]
            clean = _run(stage, precision, [s for s in range(STEPS) if s != BAD], None)
            out[(precision, poison)] = (poisoned, clean, warnings)
    return out


def keeps_skipping(stage: int) -> dict:
    """NaN on every step: the run stops after ``max_consecutive_skipped_steps`` with the weights untouched."""
    engine, *_ = deepspeed.initialize(
        model=make_model(), config=config(stage, "fp32", max_consecutive_skipped_steps=3)
    )
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        before = [p.detach().clone() for p in engine.module.parameters()]
    error = None
    for step in range(10):
        engine.backward(_loss(engine, step) * float("nan"))
        try:
            engine.step()
        except NonFiniteGradientsError as exc:
            error = str(exc)
            break
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        after = [p.detach().clone() for p in engine.module.parameters()]
    engine.destroy()
    return {
        "error": error,
        "at_step": step,
        "unchanged": all(torch.equal(a, b) for a, b in zip(before, after)),
    }


def call_order(stage: int) -> dict:
    """step() without backward and a second backward at a boundary are errors; Accelerate's pattern is not."""
    out = {}
    engine, *_ = deepspeed.initialize(model=make_model(), config=config(stage, "fp32"))
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        before = [p.detach().clone() for p in engine.module.parameters()]
    try:
        engine.step()
    except TrainingCallError as exc:
        out["step_without_backward"] = str(exc)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        out["unchanged"] = all(torch.equal(a, p) for a, p in zip(before, engine.module.parameters()))
    engine.backward(_loss(engine, 0))
    try:
        engine.backward(_loss(engine, 1))
    except TrainingCallError as exc:
        out["backward_twice"] = str(exc)
    engine.step()
    # Accelerate accumulates with the boundary off, and calls step() only at the boundary.
    engine.set_gradient_accumulation_boundary(False)
    engine.backward(_loss(engine, 2))
    engine.backward(_loss(engine, 3))
    engine.set_gradient_accumulation_boundary(True)
    engine.backward(_loss(engine, 4))
    engine.step()
    out["global_steps"] = engine.global_steps
    engine.destroy()
    return out
