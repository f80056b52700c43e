"""Tiny models, a stage-3 policy builder and a single-process reference for the stage-3 tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
from _models import global_batches, tiny_mlp
from torch import nn


class TiedMLP(nn.Module):
    """Two sibling layers share one weight (their common parent must hold it)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.head = (
            nn.Linear(12, 24),
            nn.Linear(24, 24),
            nn.Linear(24, 24),
            nn.Linear(24, 3),
        )
        self.c.weight = self.b.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = nn.functional.gelu
        return self.head(act(self.c(act(self.b(act(self.a(x)))))))


def tied_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TiedMLP()


def frozen_mlp(seed: int = 0) -> nn.Module:
    """``tiny_mlp`` with its first layer frozen (and left out of the optimizer)."""
    model = tiny_mlp(seed)
    for p in model[0].parameters():
        p.requires_grad_(False)
    return model


MODELS: dict[str, Callable[[], nn.Module]] = {"mlp": tiny_mlp, "tied": tied_mlp, "frozen": frozen_mlp}


def make_optimizer(model: nn.Module, lr: float = 1e-2) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)


def stage3_policy(
    *,
    cap: int = 300,
    persist: int = 30,
    clip: float = 0.0,
    offload: bool = False,
    dtype: torch.dtype = torch.float32,
    reuse: int = 0,
    prefetch: int | None = None,
    pin_memory: bool = False,
    **extra,
):
    """A stage-3 policy that splits the tiny models into several units (weights) and keeps the
    biases whole (persistent), so every part of stage 3 runs."""
    from ds_zero import MixedPrecisionPolicy, OffloadPolicy, ReducePolicy
    from ds_zero.stage3 import Stage3Policy, Zero3Policy

    return Zero3Policy(
        mixed_precision=MixedPrecisionPolicy(param_dtype=dtype),
        reduce=ReducePolicy(bucket_numel=cap),
        offload=OffloadPolicy(optimizer_device="cpu" if offload else "none", pin_memory=pin_memory),
        clip_grad=clip,
        stage3=Stage3Policy(
            prefetch_bucket_numel=cap if prefetch is None else prefetch,
            param_persistence_threshold=persist,
            max_reuse_distance=reuse,
            max_live_parameters=reuse,
            **extra,
        ),
    )


def reference(
    name: str, *, steps: int, gas: int, micro: int, world: int, clip: float
) -> dict[str, torch.Tensor]:
    """Single-process PyTorch on the same global batches: what every stage-3 run must reproduce."""
    model = MODELS[name]()
    opt = make_optimizer(model)
    batches = global_batches(steps * gas, micro, world)
    for s in range(steps):
        for k in range(gas):
            x, y = batches[s * gas + k]
            (nn.functional.mse_loss(model(x), y) / gas).backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_stage3(name: str, *, steps: int, gas: int, micro: int, clip: float, **policy_kw):
    """Stage 3 on this rank's share of the same batches; returns the trainer and the model."""
    import ds_comm
    from ds_zero import wrap

    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    model = MODELS[name]()
    trainer = wrap(model, make_optimizer(model), policy=stage3_policy(clip=clip, **policy_kw))
    batches = global_batches(steps * gas, micro, world)
    mine = slice(rank * micro, (rank + 1) * micro)
    for s in range(steps):
        for k in range(gas):
            x, y = batches[s * gas + k]
            trainer.backward(nn.functional.mse_loss(model(x[mine]), y[mine]) / gas)
        assert trainer.step()
    return trainer, model
