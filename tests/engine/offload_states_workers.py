"""Rank functions for the offload_states tests: an OpenRLHF-style loop (train, offload, "generate",
reload, train) against the same run without the offload phases."""

from __future__ import annotations

import torch

import deepspeed

STEPS = 4
PRECISIONS = {"fp32": {}, "bf16": {"bf16": {"enabled": True}}}


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 48),
        torch.nn.Tanh(),
        torch.nn.Linear(48, 40),
        torch.nn.Tanh(),
        torch.nn.Linear(40, 3),
    )


def config(stage: int, precision: str) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 2,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
        "zero_optimization": {
            "stage": stage,
            "reduce_bucket_size": 300,
            "stage3_param_persistence_threshold": 50,
        },
        **PRECISIONS[precision],
    }


def _micro(engine, step: int, k: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 * step + 10 * k + deepspeed.comm.get_rank())
    x, y = torch.randn(2, 6, generator=gen), torch.randint(0, 3, (2,), generator=gen)
    dtype = next(engine.module.parameters()).dtype
    return torch.nn.functional.cross_entropy(engine(x.to(dtype)).float(), y)


def run(stage: int, precision: str, offload: list | None) -> dict:
    """Train STEPS steps; with ``offload`` (a list of include lists), offload and reload between steps,
    and once in the middle of an accumulation (gradients held)."""
    engine, *_ = deepspeed.initialize(model=make_model(), config=config(stage, precision))
    losses, errors, exports = [], [], []
    for step in range(STEPS):
        for k in range(2):
            loss = _micro(engine, step, k)
            engine.backward(loss)
            if offload and k == 0 and step == 1:  # gradients are held here: lp_grads matter
                engine.offload_states(include=offload[0])
                engine.reload_states()
            engine.step()
            losses.append(loss.item())
        if offload:
            include = offload[step % len(offload)]
            engine.offload_states(include=include, pin_memory=True)
            try:
                engine(torch.randn(2, 6))
            except RuntimeError as exc:  # training while offloaded is refused
                errors.append(str(exc))
            engine.reload_states()
        if stage == 3:  # OpenRLHF's ZeRO-3 save between phases: the gathered 16-bit weights, on rank 0
            saved = engine._consolidated_16bit_state_dict()
            exports.append(
                None if saved is None else sorted((k, float(v.float().sum())) for k, v in saved.items())
            )
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        params = [p.detach().float().clone() for p in engine.module.parameters()]
    return {"losses": losses, "params": params, "errors": errors, "exports": exports}
