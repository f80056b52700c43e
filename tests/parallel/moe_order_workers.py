"""Rank function for the expert-group order test: the config key ``use_data_before_expert_parallelism``
reaches the engine's expert groups. Kept in a module of its own so spawned ranks import it by name."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import deepspeed


def expert_group_ranks(use_data_before: bool | None) -> dict[str, Any]:
    """This rank's expert-parallel group (ep_size 2) after ``deepspeed.initialize`` with the key set or not."""
    import torch.distributed as dist

    torch.manual_seed(0)
    model = nn.Sequential(
        deepspeed.moe.layer.MoE(hidden_size=4, expert=nn.Linear(4, 4), num_experts=2, ep_size=2)
    )
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,
        "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
    }
    if use_data_before is not None:
        config["use_data_before_expert_parallelism"] = use_data_before
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    return {"ep": dist.get_process_group_ranks(engine.moe_layers[0].deepspeed_moe.ep_group)}
