"""The engine's mixture-of-experts wiring: expert groups, optimizer groups, broadcasts and reductions.

Note: [engine and experts] When the model holds ``deepspeed.moe.layer.MoE`` layers the engine (as
DeepSpeed's) creates each layer's expert groups, broadcasts shared weights over the data-parallel group
but expert weights only inside their expert-data-parallel group (the ranks holding the same experts),
puts expert parameters into optimizer groups of their own, and tells ZeRO to reduce those groups over
the expert-data-parallel group, averaged over the data-parallel size
(Note [group reductions] in :mod:`ds_zero.group_reduction`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import ds_comm
from ds_parallel.moe import expert_groups
from ds_parallel.moe.layer import MoE
from ds_parallel.moe.utils import configure_moe_param_groups, is_moe_param
from ds_zero.group_reduction import GroupReduction


def moe_layers(module: nn.Module) -> list[MoE]:
    """The MoE layers of ``module``, in module order."""
    return [m for m in module.modules() if isinstance(m, MoE)]


def setup_expert_parallel(
    module: nn.Module, *, sequence_parallel_size: int = 1, use_data_before_expert_parallel_: bool = False
) -> list[MoE]:
    """Create the expert groups of every MoE layer (collective) and hand each layer its group."""
    layers = moe_layers(module)
    if layers and sequence_parallel_size > 1:
        raise NotImplementedError(
            "MoE layers with sequence parallelism (sequence_parallel_size > 1) are not built"
        )
    world = ds_comm.get_world_size()
    for layer in layers:
        if world % layer.ep_size:
            raise ValueError(
                f"MoE layer with ep_size={layer.ep_size} on {world} ranks: the expert parallel size "
                "must divide the number of data-parallel ranks"
            )
        layer.set_deepspeed_parallelism(use_data_before_expert_parallel_)
    return layers


def _expert_group_name(param: torch.Tensor) -> str:
    """The expert group of an expert parameter (:func:`is_moe_param`)."""
    # ds_parallel's Experts sets DeepSpeed's ``group_name`` on the Parameter object at runtime; torch's
    # Tensor type cannot declare such per-instance attributes.
    return str(param.group_name)  # type: ignore[attr-defined]


def broadcast_experts(module: nn.Module) -> None:
    """Broadcast expert parameters from the first rank of each expert-data-parallel group."""
    with torch.no_grad():
        for p in module.parameters():
            if not is_moe_param(p):
                continue
            name = _expert_group_name(p)
            if expert_groups._get_expert_data_parallel_world_size(name) > 1:
                ds_comm.broadcast(
                    p.data,
                    expert_groups._get_expert_broadcast_src_rank(name),
                    group=expert_groups._get_expert_data_parallel_group(name),
                )


def expert_param_ids(module: nn.Module) -> set[int]:
    """``id`` of every expert parameter (excluded from the data-parallel broadcast)."""
    return {id(p) for p in module.parameters() if is_moe_param(p)}


def moe_model_parameters(model_parameters: Any, module: nn.Module) -> list[Any]:
    """The parameters for a config-built optimizer, with expert parameters in groups of their own."""
    params = list(model_parameters) if model_parameters is not None else list(module.parameters())
    return configure_moe_param_groups(params)


def group_reductions(optimizer: torch.optim.Optimizer, dp_world_size: int) -> dict[int, GroupReduction]:
    """The reduction of each optimizer group that holds expert parameters (checked: one expert group each)."""
    out: dict[int, GroupReduction] = {}
    for index, group in enumerate(optimizer.param_groups):
        names = {_expert_group_name(p) if is_moe_param(p) else None for p in group["params"]}
        if len(names) > 1:
            raise ValueError(
                f"optimizer param group {index} mixes expert and shared parameters (or experts of different "
                "ep sizes); MoE training needs them in groups of their own: build the optimizer from "
                "deepspeed.moe.utils.split_params_into_different_moe_groups_for_optimizer(...)"
            )
        name = names.pop() if names else None
        if name is not None:
            out[index] = GroupReduction(
                group=expert_groups._get_expert_data_parallel_group(name),
                average_over=dp_world_size,
                norm_group=expert_groups._get_expert_parallel_group(name),
            )
    return out


__all__ = [
    "broadcast_experts",
    "expert_param_ids",
    "group_reductions",
    "moe_layers",
    "moe_model_parameters",
    "setup_expert_parallel",
]
