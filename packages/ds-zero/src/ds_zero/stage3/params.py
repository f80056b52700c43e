"""The stage-3 master-weight holder (the trainer's ``Masters``), composed of two parts.

* **Unit shards**: for each parameter a shard unit manages, the optimizer steps a flat fp32 tensor
  that *aliases* this rank's rows of the sharded parameter (Note [shards are masters] in
  :mod:`ds_zero.stage3.sharding`), so there is no copy and nothing to publish; FSDP2 gathers the
  updated rows at the next forward. Its gradient is FSDP2's reduce-scattered gradient, aliased too.
* **Persistent parameters** (below ``stage3_param_persistence_threshold``): whole on every rank, they
  are stage 1's case, so they are handed to :class:`ds_zero.stage12.ShardedParams` (flat units,
  fp32 master shards, all-gather after the step) with stage 1's reduction: their small gradients
  accumulate whole and are reduce-scattered once at the step. That needs no per-parameter autograd
  hook, whose host cost (measured: several ms per step for ~100 small tensors) would dominate.

Both expose per-parameter slices (``units`` / ``holders`` / ``names``) in the layout
:mod:`ds_zero.sharded_state` saves, so stage-3 checkpoints load at every stage and world size.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

import ds_comm
from ds_zero.dtypes import grad_dtypes
from ds_zero.grad_reducer import GradReducer
from ds_zero.policy import ZeroPolicy
from ds_zero.stage3 import shards
from ds_zero.stage3.sharding import ShardedModel
from ds_zero.stage3.status import zero_param
from ds_zero.stage12 import ShardedParams, ShardedReduction
from ds_zero.units import ParamSlot


@dataclass
class ParamShard:
    """One unit-sharded parameter's piece on this rank, shaped like :class:`ds_zero.units.FlatUnit`
    for :mod:`ds_zero.sharded_state` (one slot; this rank's range of the flattened parameter)."""

    slots: list[ParamSlot]
    group_index: int
    world_size: int
    start: int
    end: int

    def owned_slices(self) -> list[tuple[ParamSlot, int, int, int]]:
        return [(self.slots[0], self.start, self.end, 0)] if self.end > self.start else []


class _GroupsView:
    """An optimizer's param groups restricted to some parameters (what ShardedParams reads and rewires)."""

    def __init__(self, groups: list[dict[str, Any]], keep: list[list[nn.Parameter]]) -> None:
        self.param_groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": list(ps)}
            for g, ps in zip(groups, keep)
        ]


def _local(tensor: Tensor) -> Tensor:
    """This rank's part of a DTensor (a plain tensor as is), without autograd.

    Note: [host cost] These run for every parameter at every step, and on a fast GPU the step is
    bound by the host: DTensor's own ``_local_tensor`` field is read directly (``to_local()`` goes
    through an autograd Function) and no tensor is created unless needed.
    """
    if not isinstance(tensor, DTensor):
        return tensor
    local = getattr(tensor, "_local_tensor", None)
    return tensor.to_local().detach() if local is None else local


def _local_flat(param: DTensor) -> Tensor:
    return _local(param).detach().view(-1)


class Stage3Params:
    """The stage-3 ``Masters``: unit shards plus (optionally) stage-2 handling of persistent parameters."""

    def __init__(
        self, sharded: ShardedModel, optimizer: torch.optim.Optimizer, policy: ZeroPolicy, group: Any
    ) -> None:
        self.sharded = sharded
        self.optimizer = optimizer
        world, rank = ds_comm.get_world_size(group), ds_comm.get_rank(group)
        old_of = {
            id(self.sharded.replaced.get(id(p), p)): p for g in optimizer.param_groups for p in g["params"]
        }
        unit_groups, persistent_groups = self._split_groups(optimizer)
        self.persistent = self._persistent_part(persistent_groups, optimizer, policy, group)
        base = sum(len(g) for g in persistent_groups)
        self.unit_params: list[DTensor] = []
        self.unit_holders: list[nn.Parameter] = []
        self.unit_shards: list[ParamShard] = []
        self._unit_names: dict[int, str] = {}
        for g, params in enumerate(unit_groups):
            holders = []
            for p in params:
                index = base + len(self.unit_params)
                start, end = shards.flat_range(p.shape, world, rank)
                holder = nn.Parameter(_local_flat(p))
                _move_state(optimizer, old_of[id(p)], holder, start, end, p.numel())
                self.unit_params.append(p)
                self.unit_holders.append(holder)
                self.unit_shards.append(
                    ParamShard([ParamSlot(index, 0, p.numel(), p.shape)], g, world, start, end)
                )
                self._unit_names[index] = sharded.names[id(p)]
                holders.append(holder)
            extra = self.persistent_masters_of_group(g)
            optimizer.param_groups[g]["params"] = holders + extra
        this = weakref.ref(self)
        for whole in self.persistent_params:
            zero_param(
                whole
            )._ds_persistent_owner = this  # read by GatheredParameters (no weakref on the tensor itself)
        in_opt = {id(p) for p in self.unit_params} | {id(p) for p in self.persistent_params}
        self.other_params = [
            p for p in sharded.module.parameters() if p.requires_grad and id(p) not in in_opt
        ]

    # --- construction -------------------------------------------------------------------------------
    def _split_groups(
        self, optimizer: torch.optim.Optimizer
    ) -> tuple[list[list[DTensor]], list[list[nn.Parameter]]]:
        """Each optimizer group's trainable parameters (as the model now holds them), by part."""
        known = self.sharded.names
        units, persistent = [], []
        for group in optimizer.param_groups:
            now = [self.sharded.replaced.get(id(p), p) for p in group["params"]]
            strangers = [p for p in now if id(p) not in known]
            if strangers:
                raise ValueError(
                    f"the optimizer holds {len(strangers)} parameter(s) that are not part of the model"
                )
            units.append([p for p in now if isinstance(p, DTensor) and p.requires_grad])
            persistent.append([p for p in now if not isinstance(p, DTensor) and p.requires_grad])
        return units, persistent

    def _persistent_part(
        self,
        groups: list[list[nn.Parameter]],
        optimizer: torch.optim.Optimizer,
        policy: ZeroPolicy,
        group: Any,
    ) -> ShardedParams | None:
        if not any(groups):
            self._persistent_view = None
            return None
        holder = nn.Module()
        for i, p in enumerate(q for g in groups for q in g):
            holder.register_parameter(f"p{i}", p)
        view = _GroupsView(optimizer.param_groups, groups)
        part = ShardedParams(holder, view, policy, group)  # type: ignore[arg-type]
        mp = policy.mixed_precision
        dtypes = grad_dtypes(mp, 3)  # Note [gradient dtypes]: as the sharded units, in the master dtype
        part.attach(
            GradReducer(
                part.units,
                grad_dtype=dtypes.accum,
                group=group,
                policy=policy.reduce,
                reduce_dtype=dtypes.reduce,
                full_grad_dtype=dtypes.accum if dtypes.accum != mp.param_dtype else None,
            )
        )
        part.names = {
            slot.index: self.sharded.names[id(p)]
            for unit in part.units
            for slot, p in zip(unit.slots, unit.params)
        }
        self._persistent_view = view
        return part

    def persistent_masters_of_group(self, g: int) -> list[nn.Parameter]:
        """The persistent part's fp32 master shards that belong to optimizer group ``g``."""
        if self._persistent_view is None:
            return []
        return list(self._persistent_view.param_groups[g]["params"])

    def reduction(self) -> ShardedReduction | None:
        """Stage 1's reduction for the persistent parameters (None when there are none)."""
        return None if self.persistent is None else ShardedReduction(self.persistent.reduction, stage=1)

    @property
    def persistent_params(self) -> list[nn.Parameter]:
        """The trainable parameters that stay whole (in the optimizer)."""
        return [] if self.persistent is None else self.persistent.model_params

    # --- the Masters protocol ----------------------------------------------------------------------
    @property
    def model_params(self) -> list[nn.Parameter]:
        """Parameters the trainer hooks: FSDP2 reduces unit gradients itself; persistent ones reduce at the
        step, and are hooked only where they accumulate in a dtype other than the model's (Note
        [gradient dtypes]: each backward moves their gradient into the fp32 sum)."""
        if self.persistent is None or self.persistent.reduction.full_grad_dtype is None:
            return []
        return self.persistent.model_params

    @property
    def holders(self) -> list[Tensor]:
        return [*self.unit_holders, *([] if self.persistent is None else self.persistent.holders)]

    @property
    def units(self) -> list[Any]:
        """Per-parameter slices for :mod:`ds_zero.sharded_state`, aligned with :attr:`holders`."""
        self._sync()
        return list(self.unit_shards) + ([] if self.persistent is None else list(self.persistent.units))

    @property
    def names(self) -> dict[int, str]:
        return {**self._unit_names, **({} if self.persistent is None else self.persistent.names)}

    def holder(self, param: Tensor) -> Tensor:
        return param

    def accumulate(self, param: Tensor) -> None:
        """Nothing: FSDP2 accumulates unit gradients; the stage-2 reducer takes persistent ones."""

    def grads(self) -> list[Tensor]:
        """Point each master's ``.grad`` at its reduced gradient shard and return them."""
        self._sync()
        out = []
        for p, holder in zip(self.unit_params, self.unit_holders):
            grad = p.grad
            if grad is None:
                holder.grad = None
                continue
            local = _local(grad)
            flat = local.view(-1) if local.is_contiguous() else local.reshape(-1)
            holder.grad = flat if flat.dtype == holder.dtype else flat.to(holder.dtype)
            out.append(holder.grad)
        if self.persistent is not None:
            out.extend(self.persistent.grads())
        return out

    def publish(self) -> None:
        """Gather the persistent parameters; drop any gathered unit copy (the next forward re-gathers)."""
        if self.persistent is not None:
            self.persistent.publish()
        self.sharded.reshard()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in (*self.unit_params, *self.other_params, *self.unit_holders):
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.zero_()
        if self.persistent is not None:
            self.persistent.zero_grad(set_to_none)

    def refresh_from_model(self) -> None:
        """Re-take the persistent masters from the model (unit masters *are* the model's shards)."""
        if self.persistent is not None:
            self.persistent.refresh_from_model()
        self.sharded.reshard()

    def _sync(self) -> None:
        # FSDP2 may re-pad a shard into new storage at its lazy init or after a weights load; the
        # masters must keep aliasing the live rows.
        for p, holder in zip(self.unit_params, self.unit_holders):
            local = _local(p)  # Note [host cost]: compare pointers, build a view only on a change
            if local.numel() and local.data_ptr() != holder.data_ptr():
                holder.data = local.detach().view(-1)


def _move_state(
    optimizer: torch.optim.Optimizer, old: Tensor, holder: nn.Parameter, start: int, end: int, numel: int
) -> None:
    """Carry a client optimizer's existing state for a parameter (if any) over to its shard."""
    state = optimizer.state.pop(old, None)
    if state:
        optimizer.state[holder] = {
            k: (
                v.reshape(-1)[start:end].clone()
                if torch.is_tensor(v) and v.dim() > 0 and v.numel() == numel
                else v
            )
            for k, v in state.items()
        }
