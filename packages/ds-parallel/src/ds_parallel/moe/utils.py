"""DeepSpeed's ``deepspeed.moe.utils``: telling expert parameters apart and splitting optimizer groups by expert group.

Note: [moe param groups] ZeRO and the gradient reduction need expert parameters in optimizer groups of
their own, one per expert group name (``"ep_size_<N>"``), marked ``'moe': True`` and named after the
expert group, because those groups are reduced over a different process group. Every original group is
split: its expert parameters move to copies of it (same hyper-parameters), at most ``max_group_size``
elements each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

if TYPE_CHECKING:  # typing only: the attributes are set on ordinary Parameters

    class ExpertParameter(nn.Parameter):
        """An expert parameter as :class:`~ds_parallel.moe.layer.Experts` marks it."""

        allreduce: bool
        group_name: str | None


def expert_param(param: torch.Tensor) -> ExpertParameter:
    """``param`` itself, typed with the expert-parameter attributes (set at run time)."""
    return cast("ExpertParameter", param)


def has_moe_layers(m: nn.Module) -> tuple[bool, int]:
    """(whether ``m`` holds an MoE layer, the number of experts of the first one)."""
    from ds_parallel.moe.layer import MoE

    for module in m.modules():
        if isinstance(module, MoE):
            return True, module.num_experts
    return False, 0


def is_moe_param(param: torch.Tensor) -> bool:
    """Whether ``param`` is an expert parameter (marked ``allreduce = False`` by ``Experts``)."""
    return hasattr(param, "allreduce") and not param.allreduce


def split_params_into_shared_and_expert_params(
    params: list[nn.Parameter],
) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(shared parameters, expert parameters)."""
    shared = [p for p in params if not is_moe_param(p)]
    experts = [p for p in params if is_moe_param(p)]
    return shared, experts


def split_params_grads_into_shared_and_expert_params(
    group: list[nn.Parameter],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(gradients of shared parameters, gradients of expert parameters), in the parameters' dtype."""
    shared = [p.grad.to(p.dtype) for p in group if p.grad is not None and not is_moe_param(p)]
    experts = [p.grad.to(p.dtype) for p in group if p.grad is not None and is_moe_param(p)]
    return shared, experts


def split_params_into_different_moe_groups_for_optimizer(
    param_groups: dict[str, Any] | tuple[dict[str, Any], ...] | list[dict[str, Any]],
    max_group_size: int | float | None = 178956971,
) -> list[dict[str, Any]]:
    """Move expert parameters into groups of their own (Note [moe param groups])."""
    if isinstance(param_groups, tuple):
        param_groups = list(param_groups)
    elif isinstance(param_groups, dict):
        param_groups = [param_groups]
    elif not isinstance(param_groups, list):
        raise ValueError(f"Unknown param group type of {type(param_groups)}")
    names: list[str] = []
    for group in param_groups:
        group["params"] = list(group["params"])  # an iterator would be consumed by the first pass
        for p in group["params"]:
            if is_moe_param(p) and p.group_name not in names:
                names.append(p.group_name)
    new_groups: list[dict[str, Any]] = []
    for group in param_groups:
        by_name: dict[str, list[nn.Parameter]] = {n: [] for n in names}
        shared: list[nn.Parameter] = []
        for p in group["params"]:
            (by_name[p.group_name] if is_moe_param(p) else shared).append(p)
        template = {**group}
        group["params"] = shared
        for name in names:
            for chunk in _chunks(by_name[name], max_group_size):
                new_groups.append({**template, "name": name, "moe": True, "params": chunk})
    return param_groups + new_groups


def _chunks(params: list[nn.Parameter], limit: int | float | None) -> list[list[nn.Parameter]]:
    if limit is None:
        return [params]
    out: list[list[nn.Parameter]] = []
    current: list[nn.Parameter] = []
    size = 0
    for p in params:
        if current and size + p.numel() > limit:
            out.append(current)
            current, size = [], 0
        current.append(p)
        size += p.numel()
    if current:
        out.append(current)
    return out


def is_moe_param_group(param_group: dict[str, Any]) -> bool:
    """Whether an optimizer group holds expert parameters."""
    return bool(param_group.get("moe", False))


def configure_moe_param_groups(model_parameters: list[Any]) -> list[dict[str, Any]]:
    """MoE-ready optimizer groups from a list of parameters or of groups (groups already split are kept)."""
    if not isinstance(model_parameters, list):
        raise TypeError("model_parameters must be a list")
    if not model_parameters:
        return model_parameters
    first = model_parameters[0]
    if isinstance(first, torch.Tensor):
        return split_params_into_different_moe_groups_for_optimizer(
            {"params": model_parameters, "name": "dense-params"}
        )
    if any("moe" in g for g in model_parameters):
        return model_parameters
    return split_params_into_different_moe_groups_for_optimizer(model_parameters)


__all__ = [
    "configure_moe_param_groups",
    "has_moe_layers",
    "is_moe_param",
    "is_moe_param_group",
    "split_params_grads_into_shared_and_expert_params",
    "split_params_into_different_moe_groups_for_optimizer",
    "split_params_into_shared_and_expert_params",
]
