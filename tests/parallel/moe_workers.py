"""Rank functions and the single-process reference for the mixture-of-experts engine tests.

A tiny model (shared input layer, one MoE layer of 4 experts, shared head) trains for ``STEPS`` steps.
Step ``k``'s global batch has ``MICRO`` samples per data-parallel rank; rank ``d`` takes samples
``[d * MICRO, (d + 1) * MICRO)``. Gating is top-1 without dropping, so each token's output does not
depend on the other tokens and the distributed run must equal one process that holds every expert and
runs each rank's samples as a separate micro-batch (gates and the aux loss are per rank, as in DeepSpeed).
Experts get distinct weights (seeded by their global index), so routing a token to the wrong rank's
expert would show.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import deepspeed

HIDDEN, IN, CLASSES, EXPERTS, MICRO, STEPS, LR, CLIP, AUX = 16, 8, 4, 4, 6, 10, 0.2, 0.5, 0.01


class MoENet(nn.Module):
    """Linear -> MoE(4 experts) -> Linear; forward returns (logits, l_aux)."""

    def __init__(self, ep_size: int, ep_rank: int = 0, k: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(IN, HIDDEN)
        self.moe = deepspeed.moe.layer.MoE(
            hidden_size=HIDDEN,
            expert=nn.Linear(HIDDEN, HIDDEN),
            num_experts=EXPERTS,
            ep_size=ep_size,
            k=k,
            drop_tokens=False,
            use_rts=False,
            min_capacity=0,
        )
        self.head = nn.Linear(HIDDEN, CLASSES)
        local = EXPERTS // ep_size
        for i, expert in enumerate(self.moe.deepspeed_moe.experts.deepspeed_experts):
            g = torch.Generator().manual_seed(100 + ep_rank * local + i)  # global expert index
            with torch.no_grad():
                expert.weight.copy_(torch.randn(expert.weight.shape, generator=g) * 0.3)
                expert.bias.copy_(torch.randn(expert.bias.shape, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, l_aux, _ = self.moe(torch.tanh(self.inp(x)))
        return self.head(h), l_aux


def batch(step: int, dp: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s global batch (``dp * MICRO`` samples)."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(dp * MICRO, IN, generator=g), torch.randint(0, CLASSES, (dp * MICRO,), generator=g)


def config(stage: int, dp: int) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": MICRO,
        "train_batch_size": MICRO * dp,
        "optimizer": {"type": "SGD", "params": {"lr": LR, "momentum": 0.9}},
        "zero_optimization": {"stage": stage},
        "gradient_clipping": CLIP,
    }


def train_rank(stage: int, ep_size: int) -> dict[str, Any]:
    """One rank of the distributed run: its losses, aux losses and final weights (expert keys global)."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    ep_rank = rank % ep_size
    model = MoENet(ep_size, ep_rank)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=config(stage, world)
    )
    losses, auxes = [], []
    for step in range(STEPS):
        x, y = batch(step, world)
        x, y = x[rank * MICRO : (rank + 1) * MICRO], y[rank * MICRO : (rank + 1) * MICRO]
        logits, l_aux = engine(x)
        loss = F.cross_entropy(logits, y) + AUX * l_aux
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        auxes.append(l_aux.item())
    return {
        "losses": losses,
        "aux": auxes,
        "weights": _global_weights(engine.module, ep_size, ep_rank),
        "norm": engine.get_global_grad_norm(),
    }


def _global_weights(model: nn.Module, ep_size: int, ep_rank: int) -> dict[str, torch.Tensor]:
    local = EXPERTS // ep_size
    prefix = "moe.deepspeed_moe.experts.deepspeed_experts."
    out = {}
    for name, p in model.named_parameters():
        if name.startswith(prefix):
            i, rest = name[len(prefix) :].split(".", 1)
            name = f"{prefix}{ep_rank * local + int(i)}.{rest}"
        out[name] = p.detach().float().clone()
    return out


def reference(dp: int) -> dict[str, Any]:
    """One process, every expert: each data-parallel rank's samples as a separate micro-batch."""
    model = MoENet(1)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    losses: list[list[float]] = [[] for _ in range(dp)]
    auxes: list[list[float]] = [[] for _ in range(dp)]
    for step in range(STEPS):
        x, y = batch(step, dp)
        opt.zero_grad()
        for r in range(dp):
            logits, l_aux = model(x[r * MICRO : (r + 1) * MICRO])
            loss = F.cross_entropy(logits, y[r * MICRO : (r + 1) * MICRO]) + AUX * l_aux
            (loss / dp).backward()
            losses[r].append(loss.item())
            auxes[r].append(l_aux.item())
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
    return {
        "losses": losses,
        "aux": auxes,
        "norm": float(norm),
        "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
    }


def tutorial_rank(stage: int, moe_param_group: bool) -> dict[str, Any]:
    """The CIFAR tutorial's use of the API, without its script: a small conv net whose head is a list of
    ``deepspeed.moe.layer.MoE`` layers (ep 2), ``split_params_into_different_moe_groups_for_optimizer``,
    ``deepspeed.initialize(args=..., training_data=..., config=...)`` with the tutorial's config shape,
    a few training steps from the engine's data loader, then evaluation."""
    import argparse

    import torch.distributed as dist

    from deepspeed.moe.utils import (
        has_moe_layers,
        is_moe_param,
        split_params_into_different_moe_groups_for_optimizer,
    )

    torch.manual_seed(0)
    args = argparse.Namespace(
        local_rank=-1,
        moe=True,
        ep_world_size=2,
        num_experts=[2, 4],
        top_k=1,
        min_capacity=0,
        noisy_gate_policy="RSample",
        mlp_type="standard",
        moe_param_group=moe_param_group,
        deepspeed=True,
        deepspeed_config=None,
    )

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 5)
            self.fc = nn.Linear(4 * 14 * 14, 16)
            expert = nn.Linear(16, 16)
            self.moe_layer_list = nn.ModuleList(
                [
                    deepspeed.moe.layer.MoE(
                        hidden_size=16,
                        expert=expert,
                        num_experts=n,
                        ep_size=args.ep_world_size,
                        use_residual=args.mlp_type == "residual",
                        k=args.top_k,
                        min_capacity=args.min_capacity,
                        noisy_gate_policy=args.noisy_gate_policy,
                    )
                    for n in args.num_experts
                ]
            )
            self.out = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1)
            x = F.relu(self.fc(x))
            for layer in self.moe_layer_list:
                x, _, _ = layer(x)
            return self.out(x)

    net = Net()
    g = torch.Generator().manual_seed(5)
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 32, 32, generator=g), torch.arange(64) % 10)
    params: Any = filter(lambda p: p.requires_grad, net.parameters())
    if moe_param_group:
        params = split_params_into_different_moe_groups_for_optimizer(
            {"params": list(params), "name": "parameters"}
        )
    cfg = {
        "train_batch_size": 16,
        "steps_per_print": 2000,
        "optimizer": {
            "type": "Adam",
            "params": {"lr": 0.001, "betas": [0.8, 0.999], "eps": 1e-8, "weight_decay": 3e-7},
        },
        "scheduler": {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": 0, "warmup_max_lr": 0.001, "warmup_num_steps": 1000},
        },
        "gradient_clipping": 1.0,
        "prescale_gradients": False,
        "zero_optimization": {"stage": stage, "reduce_bucket_size": 50000000, "overlap_comm": True},
    }
    engine, optimizer, loader, _ = deepspeed.initialize(
        args=args, model=net, model_parameters=params, training_data=data, config=cfg
    )
    losses = []
    for x, y in loader:
        loss = F.cross_entropy(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    engine.eval()
    with torch.no_grad():
        predicted = engine(torch.randn(4, 3, 32, 32, generator=g)).argmax(dim=1)
    groups = [(pg.get("name"), bool(pg.get("moe")), len(pg["params"])) for pg in optimizer.param_groups]
    return {
        "losses": losses,
        "predicted": predicted.tolist(),
        "groups": groups,
        "rank": dist.get_rank(),
        "has_moe": has_moe_layers(net),
        "engine_has_moe": engine.has_moe_layers,
        "num_experts": engine.num_experts,
        "shared": {n: p.detach().clone() for n, p in net.named_parameters() if not is_moe_param(p)},
        "experts": {n: p.detach().clone() for n, p in net.named_parameters() if is_moe_param(p)},
    }


def checkpoint_rank(stage: int, ep_size: int, save_dir: str, phase: str) -> dict[str, Any]:
    """``save``: train 3 steps and save; ``load``: build at ``ep_size`` and load the weights back.
    Returns the weights keyed by global expert index."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    ep_rank = rank % ep_size
    model = MoENet(
        ep_size, ep_rank if phase == "save" else (ep_rank + 1) % ep_size
    )  # load: other experts first
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=config(stage, world)
    )
    if phase == "save":
        for step in range(3):
            x, y = batch(step, world)
            logits, l_aux = engine(x[rank * MICRO : (rank + 1) * MICRO])
            engine.backward(F.cross_entropy(logits, y[rank * MICRO : (rank + 1) * MICRO]) + AUX * l_aux)
            engine.step()
        engine.save_checkpoint(save_dir, tag="t3")
        out: dict[str, Any] = {}
    else:
        try:
            engine.load_checkpoint(save_dir, tag="t3")
        except Exception as exc:  # noqa: BLE001 - the refusal's message is what the test checks
            out = {"refused": str(exc)}
        else:
            out = {"refused": None}
        engine.load_checkpoint(save_dir, tag="t3", load_optimizer_states=False)
        out["global_steps"] = engine.global_steps
    out["weights"] = _global_weights(engine.module, ep_size, ep_rank)
    return out
