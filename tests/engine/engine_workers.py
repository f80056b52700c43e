"""Rank functions and the single-process reference for the engine's multi-rank tests.

Kept in a module of its own so spawned ranks import it by name. Every run, at any world size, trains
the same tiny model on the same global batches of ``GLOBAL`` samples per optimizer step: in micro-step
``k`` rank ``r`` takes samples ``[(k * world + r) * MICRO, ... + MICRO)`` of the step's batch, and
accumulation is ``GLOBAL / (MICRO * world)`` micro-steps.
"""

from __future__ import annotations

import torch

import deepspeed

GLOBAL, MICRO = 16, 2
# SGD is linear in the gradient, so any error in averaging shows; the clip threshold sits inside the
# range of gradient norms, so clipping is active on some steps and not on others (the test checks it).
OPTIMIZERS = {
    "sgd": {"type": "SGD", "params": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}},
    "adamw": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.01}},
}
CLIP = {"sgd": 1.8, "adamw": 0.05}  # sgd: inside the range of this run's gradient norms


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Embedding(17, 8),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 3, 32),
        torch.nn.GELU(),
        torch.nn.LayerNorm(32),
        torch.nn.Linear(32, 5),
    )


def config(world: int, optimizer: str, stage: int = 0, **extra) -> dict:
    section = OPTIMIZERS[optimizer]
    return {
        "train_batch_size": GLOBAL,
        "train_micro_batch_size_per_gpu": MICRO,
        "gradient_clipping": CLIP[optimizer],
        "optimizer": section,
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_num_steps": 3,
                "total_num_steps": 12,
                "warmup_max_lr": section["params"]["lr"],
                "warmup_type": "linear",
            },
        },
        "zero_optimization": {"stage": stage, "reduce_bucket_size": 300},  # several buckets
        **extra,
    }


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7919 * step + 1)
    return torch.randint(0, 17, (GLOBAL, 3), generator=gen), torch.randint(0, 5, (GLOBAL,), generator=gen)


def reference(steps: int, optimizer: str) -> tuple[list[torch.Tensor], list[float], list[float]]:
    """Single-process PyTorch on the same global batches: parameters, per-step losses and grad norms."""
    from ds_engine.lr_schedules import WarmupDecayLR

    section, clip = OPTIMIZERS[optimizer], CLIP[optimizer]
    model = make_model()
    opt = getattr(torch.optim, section["type"])(model.parameters(), **section["params"])
    lr = section["params"]["lr"]
    sched = WarmupDecayLR(opt, total_num_steps=12, warmup_num_steps=3, warmup_max_lr=lr, warmup_type="linear")
    losses, norms = [], []
    for step in range(steps):
        x, y = global_batch(step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        total = loss.item()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        opt.zero_grad()
        sched.step()
        losses.append(total)
    return [p.detach().clone() for p in model.parameters()], losses, norms


def _train(engine, steps: int, world: int, norms: list[float] | None = None) -> list[float]:
    """``steps`` optimizer steps from ``engine.global_steps`` on; returns the global mean loss per step."""
    rank = deepspeed.comm.get_rank()
    gas = engine.gradient_accumulation_steps()
    losses = []
    for _ in range(steps):
        total = torch.zeros(())
        x, y = global_batch(engine.global_steps)
        for k in range(gas):
            mine = slice((k * world + rank) * MICRO, (k * world + rank + 1) * MICRO)
            loss = torch.nn.functional.cross_entropy(engine(x[mine]), y[mine])
            total += engine.backward(loss).detach()
            engine.step()
        deepspeed.comm.all_reduce(total)
        losses.append(total.item() / world)
        if norms is not None:
            norms.append(engine.get_global_grad_norm())
    return losses


def train_and_report(steps: int, optimizer: str):
    world = deepspeed.comm.get_world_size()
    engine, *_ = deepspeed.initialize(model=make_model(), config=config(world, optimizer))
    norms: list[float] = []
    losses = _train(engine, steps, world, norms)
    return [p.detach().clone() for p in engine.module.parameters()], losses, norms, engine.get_lr()


def train_and_save(steps: int, save_dir: str, optimizer: str, stage: int = 0):
    world = deepspeed.comm.get_world_size()
    engine, *_ = deepspeed.initialize(model=make_model(), config=config(world, optimizer, stage))
    losses = _train(engine, steps, world)
    engine.save_checkpoint(save_dir, client_state={"losses": losses})
    return losses


def load_and_train(steps: int, save_dir: str, optimizer: str, stage: int = 0):
    world = deepspeed.comm.get_world_size()
    start = make_model(seed=99)  # a different start: everything must come from the checkpoint
    engine, *_ = deepspeed.initialize(model=start, config=config(world, optimizer, stage))
    path, client_state = engine.load_checkpoint(save_dir)
    assert path is not None, "checkpoint not found"
    assert engine.global_steps == len(client_state["losses"])
    losses = _train(engine, steps, world)
    return (
        [p.detach().clone() for p in engine.module.parameters()],
        client_state["losses"] + losses,
        engine.global_steps,
        engine.get_lr(),
    )
