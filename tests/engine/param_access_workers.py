"""Rank function and reference for the engine-level test of ``deepspeed.utils.safe_get_full_*``.

Kept in a module of its own so spawned ranks import it by name."""

from __future__ import annotations

import torch

import deepspeed

MICRO, WORLD = 2, 2


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        torch.nn.GELU(),
        torch.nn.Linear(16, 16),
        torch.nn.GELU(),
        torch.nn.Linear(16, 3),
    )


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [
        (torch.randn(MICRO * WORLD, 6, generator=gen), torch.randn(MICRO * WORLD, 3, generator=gen))
        for _ in range(2)
    ]


def reference() -> dict[str, dict[str, torch.Tensor]]:
    """One AdamW step on the global batch, then the next batch's gradient."""
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    (x0, y0), (x1, y1) = batches()
    torch.nn.functional.mse_loss(model(x0), y0).backward()
    opt.step()
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x1), y1).backward()
    return {
        "param": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grad": {n: p.grad.clone() for n, p in model.named_parameters()},
        "exp_avg": {n: opt.state[p]["exp_avg"].clone() for n, p in model.named_parameters()},
    }


def engine_accessors(stage: int) -> tuple[dict[str, dict[str, torch.Tensor]], bool]:
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad, safe_get_full_optimizer_state

    config = {
        "train_batch_size": MICRO * WORLD,
        "train_micro_batch_size_per_gpu": MICRO,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.0}},
        "zero_optimization": {
            "stage": stage,
            "reduce_bucket_size": 200,
            "stage3_param_persistence_threshold": 20,
        },
    }
    model = make_model()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    rank = deepspeed.comm.get_rank()
    mine = slice(rank * MICRO, (rank + 1) * MICRO)
    (x0, y0), (x1, y1) = batches()
    engine.backward(torch.nn.functional.mse_loss(engine(x0[mine]), y0[mine]))
    engine.step()
    engine.backward(torch.nn.functional.mse_loss(engine(x1[mine]), y1[mine]))
    got: dict[str, dict[str, torch.Tensor]] = {"param": {}, "grad": {}, "exp_avg": {}}
    for name, p in engine.module.named_parameters():  # every rank, same order: the getters are collective
        got["param"][name] = safe_get_full_fp32_param(p).cpu()
        got["grad"][name] = safe_get_full_grad(p).cpu()
        got["exp_avg"][name] = safe_get_full_optimizer_state(p, "exp_avg").cpu()
    overflow = engine.optimizer.check_overflow()
    engine.step()
    return got, overflow
