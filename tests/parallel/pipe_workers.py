"""Rank functions and the single-process reference for the pipeline tests.

Every run trains the same layers on the same global batches: ``GLOBAL`` samples per step, ``MICRO`` per
micro-batch; data-parallel replica ``d`` takes micro-batch ``k`` = samples ``[(k * dp + d) * MICRO, ...)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import deepspeed
from deepspeed.pipe import PipelineModule, TiedLayerSpec

GLOBAL, MICRO, STEPS, DIM = 8, 2, 10, 6
CLIP = 0.5  # inside the range of this run's gradient norms: clipping acts on some steps


def tied_head(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The tied last layer: ``x @ W`` with the first layer's weight."""
    return x @ module.weight


def layers(tied: bool, seed: int = 0) -> list[Any]:
    """The layer list (plain modules, built identically on every rank) and, with ``tied``, a shared first/last."""
    torch.manual_seed(seed)
    body = [nn.Linear(DIM, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, DIM)]
    if not tied:
        return [nn.Linear(DIM, DIM), *body, nn.Linear(DIM, 3)]
    torch.manual_seed(seed + 1)
    emb = nn.Linear(DIM, DIM, bias=False)
    state = {k: v.clone() for k, v in emb.state_dict().items()}

    class Tied(nn.Linear):  # every TiedLayerSpec builds the same initial weights
        def __init__(self) -> None:
            super().__init__(DIM, DIM, bias=False)
            self.load_state_dict(state)

    return [TiedLayerSpec("emb", Tied), *body, TiedLayerSpec("emb", Tied, forward_fn=tied_head)]


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(GLOBAL, DIM, generator=g)
    return x, torch.randn(GLOBAL, DIM, generator=g)


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y[:, : out.shape[1]]) ** 2).mean()


def config(gas: int, stage: int = 0) -> dict:
    return {
        "train_micro_batch_size_per_gpu": MICRO,
        "gradient_accumulation_steps": gas,
        "optimizer": {"type": "SGD", "params": {"lr": 0.1, "momentum": 0.9}},
        "gradient_clipping": CLIP,
        "zero_optimization": {"stage": stage},
        "steps_per_print": 1000,
    }


def reference(tied: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The same layers as one module, on the whole global batch each step."""
    specs = layers(tied)
    mods = [s.build() if isinstance(s, TiedLayerSpec) else s for s in specs]
    if tied:
        mods[-1] = mods[0]
    params = list({id(p): p for m in mods if isinstance(m, nn.Module) for p in m.parameters()}.values())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    losses = []
    for step in range(STEPS):
        x, y = data(step)
        h = x
        for i, m in enumerate(mods):
            h = tied_head(m, h) if tied and i == len(mods) - 1 else m(h)
        loss = loss_fn(h, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():  # the eval loss on the next batch, after training (eval_batch's counterpart)
        h, y = data(STEPS)
        for i, m in enumerate(mods):
            h = tied_head(m, h) if tied and i == len(mods) - 1 else m(h)
        losses.append(loss_fn(h, y).item())
    out = {}
    for i, m in enumerate(mods):
        if isinstance(m, nn.Module):
            for k, v in m.state_dict().items():
                out[("tied_modules.emb." if tied and i in (0, len(mods) - 1) else f"{i}.") + k] = v.clone()
    return losses, out


def train(
    num_stages: int,
    tied: bool,
    ckpt_interval: int,
    stage: int,
    start: int = 0,
    stop: int = STEPS,
    save_dir: str | None = None,
    load_dir: str | None = None,
) -> dict:
    """Rank function: steps ``start..stop`` of ``train_batch`` (after loading ``load_dir``, then saving to
    ``save_dir``); returns losses and this stage's weights."""
    world = torch.distributed.get_world_size()
    dp = world // num_stages
    gas = GLOBAL // (MICRO * dp)
    model = PipelineModule(
        layers(tied),
        num_stages=num_stages,
        loss_fn=loss_fn,
        partition_method="uniform",
        activation_checkpoint_interval=max(ckpt_interval, 0),
    )
    cfg = config(gas, stage)
    if ckpt_interval < 0:  # the interval from the config's pipeline section instead
        cfg["pipeline"] = {"activation_checkpoint_interval": -ckpt_interval}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    d = engine.grid.get_data_parallel_id()
    if load_dir is not None:
        path, client = engine.load_checkpoint(load_dir)
        assert path is not None and client == {"next": start} and engine.global_steps == start
    losses = []
    for step in range(start, stop):
        x, y = data(step)
        micro = [
            (
                x[(k * dp + d) * MICRO : (k * dp + d + 1) * MICRO],
                y[(k * dp + d) * MICRO : (k * dp + d + 1) * MICRO],
            )
            for k in range(gas)
        ]
        losses.append(float(engine.train_batch(iter(micro))))
    if stop == STEPS:  # eval_batch on the next global batch, split as for training
        x, y = data(STEPS)
        micro = [
            (
                x[(k * dp + d) * MICRO : (k * dp + d + 1) * MICRO],
                y[(k * dp + d) * MICRO : (k * dp + d + 1) * MICRO],
            )
            for k in range(gas)
        ]
        losses.append(float(engine.eval_batch(iter(micro))))
    if save_dir is not None:
        engine.save_checkpoint(save_dir, client_state={"next": stop})
    return {
        "losses": losses,
        "state": {k: v.detach().clone() for k, v in engine.module.state_dict().items()},
        "stage": engine.stage_id,
        "first": engine.is_first_stage(),
        "last": engine.is_last_stage(),
        "interval": engine.module.activation_checkpoint_interval,
    }


def mismatched(stage: int = 0) -> None:
    """Rank function: stage 1's first layer expects 7 features, stage 0 sends ``DIM``; or a ZeRO ``stage``."""
    model = PipelineModule(
        [nn.Linear(DIM, DIM), nn.Linear(7, 3)], num_stages=2, loss_fn=loss_fn, partition_method="uniform"
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=config(2, stage)
    )
    x, y = data(0)
    engine.train_batch(iter([(x[:MICRO], y[:MICRO])] * 2))


def train_low_precision(precision: str, stage: int = 0, accum: str | None = None) -> Any:
    """Rank function: 2 stages, ``STEPS`` steps in ``precision`` ("bf16" or "fp16") at ZeRO ``stage``;
    returns the losses, and with ``accum`` (data_types.grad_accum_dtype) also the tied weights."""
    model = PipelineModule(layers(True), num_stages=2, loss_fn=loss_fn, partition_method="uniform")
    cfg = {**config(GLOBAL // MICRO, stage), precision: {"enabled": True}}
    if accum is not None:
        cfg["data_types"] = {"grad_accum_dtype": accum}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    losses = []
    for step in range(STEPS):
        x, y = data(step)
        x = x.to(
            torch.bfloat16 if precision == "bf16" else torch.float16
        )  # the client casts, as with DeepSpeed
        micro = [
            (x[k * MICRO : (k + 1) * MICRO], y[k * MICRO : (k + 1) * MICRO]) for k in range(GLOBAL // MICRO)
        ]
        losses.append(float(engine.train_batch(iter(micro))))
    if accum is None:
        return losses
    tied = [p.detach().float().clone() for p, _ in model.get_tied_weights_and_groups()]
    return {"losses": losses, "tied": tied}


def _slices(step: int, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Step ``step``'s data cut into consecutive micro-batches of ``sizes`` rows."""
    x, y = data(step)
    bounds = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
    return [(x[a:b], y[a:b]) for a, b in zip(bounds, bounds[1:])]


def varying(sizes_per_step: list[list[int]], dynamic: bool) -> list[float]:
    """Rank function: 2 stages (``dynamic_shape=dynamic``), step ``i`` on micro-batches of
    ``sizes_per_step[i]`` rows (all steps the same count); returns the losses."""
    model = PipelineModule(
        layers(False), num_stages=2, loss_fn=loss_fn, partition_method="uniform", dynamic_shape=dynamic
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=config(len(sizes_per_step[0]))
    )
    return [
        float(engine.train_batch(iter(_slices(step, sizes)))) for step, sizes in enumerate(sizes_per_step)
    ]


def reference_varying(sizes_per_step: list[list[int]]) -> list[float]:
    """:func:`varying` as one module: each step's loss is the mean of its micro-batches' losses."""
    mods = layers(False)
    params = [p for m in mods for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    losses = []
    for step, sizes in enumerate(sizes_per_step):
        opt.zero_grad()
        total = torch.zeros(())
        for x, y in _slices(step, sizes):
            h = x
            for m in mods:
                h = m(h)
            total = total + loss_fn(h, y) / len(sizes)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        losses.append(total.item())
    return losses
