"""Stage 0's optimizer state in the slice format of :mod:`ds_zero.sharded_state`.

A replicated trainer holds whole parameters, so its "slices" each cover a full parameter. Saving in
the same format as the sharded stages is what lets a stage-0 checkpoint load at stages 1-3 and a
sharded checkpoint load at stage 0, at any world size, with no conversion step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ds_zero.sharded_state import FORMAT, _copy_overlaps, _index_slices, _split_state, is_side_key


def _named_holders(trainer: Any) -> list[tuple[str, torch.Tensor, int]]:
    """(model parameter name, the tensor the optimizer steps for it, param group) in group order."""
    group_of = {id(p): g for g, group in enumerate(trainer.optimizer.param_groups) for p in group["params"]}
    out = []
    for name, param in trainer.module.named_parameters():
        if not param.requires_grad:
            continue
        try:
            holder = trainer.masters.holder(param)
        except KeyError:
            continue  # not handed to the optimizer
        if id(holder) in group_of:
            out.append((name, holder, group_of[id(holder)]))
    return out


def replicated_state_dict(trainer: Any) -> dict[str, Any]:
    """Every trained parameter's fp32 value and optimizer state, as whole-parameter slices."""
    slices: list[dict[str, Any]] = []
    group_scalars: dict[int, dict[str, Any]] = {}
    for name, holder, group in _named_holders(trainer):
        tensors, scalars = _split_state(trainer.optimizer.state.get(holder, {}), holder.numel())
        if scalars:
            group_scalars.setdefault(group, scalars)
        slices.append(
            {
                "key": name,
                "shape": tuple(holder.shape),
                "start": 0,
                "end": holder.numel(),
                "group": group,
                "fp32": holder.detach().reshape(-1).float().clone(),
                "state": {k: v.detach().reshape(-1).clone() for k, v in tensors.items()},
            }
        )
    return {
        "format": FORMAT,
        "zero_stage": 0,
        "partition_count": 1,
        "param_groups": [
            {k: v for k, v in g.items() if k != "params"} for g in trainer.optimizer.param_groups
        ],
        "group_scalars": group_scalars,
        "slices": slices,
    }


def load_replicated_state_dict(
    trainer: Any, shards: Iterable[Mapping[str, Any]], *, load_optimizer_states: bool = True
) -> None:
    """Load slices saved at any stage and world size into a replicated trainer, then publish."""
    by_key, first = _index_slices(shards)
    if load_optimizer_states:
        for g, saved in enumerate(first.get("param_groups", [])):
            if g < len(trainer.optimizer.param_groups):
                trainer.optimizer.param_groups[g].update(saved)
    scalars = first.get("group_scalars", {})
    with torch.no_grad():
        for name, holder, group in _named_holders(trainer):
            pieces = by_key.get(name)
            if not pieces:
                raise KeyError(f"checkpoint has no optimizer state for parameter {name!r}")
            flat = torch.empty(holder.numel(), dtype=torch.float32)
            if _copy_overlaps(pieces, 0, holder.numel(), "fp32", flat) != holder.numel():
                raise ValueError(f"checkpoint covers only part of parameter {name!r}")
            holder.copy_(flat.view(holder.shape))
            if not load_optimizer_states:
                continue
            state: dict[str, Any] = {}
            for key in (k for k in pieces[0]["state"] if not is_side_key(k)):  # Note [side state]
                full = torch.empty(holder.numel(), dtype=pieces[0]["state"][key].dtype)
                _copy_overlaps(pieces, 0, holder.numel(), "state", full, key)
                state[key] = full.view(holder.shape).to(holder.device)
            state.update({k: torch.tensor(float(v)) for k, v in scalars.get(group, {}).items()})
            if state:
                trainer.optimizer.state[holder] = state
    trainer.masters.publish()
