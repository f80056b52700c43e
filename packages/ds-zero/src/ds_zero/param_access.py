"""DeepSpeed's per-parameter accessors (``deepspeed.utils.safe_get_full_fp32_param`` & co.).

They take a *model* parameter and find the trainer that owns it through a weak back-reference
(:func:`link_parameters`, set by :func:`ds_zero.wrap`), then read or write what the optimizer keeps
for that parameter, whatever the stage's layout:

* stage 0: the whole fp32 master (the parameter itself in fp32 training);
* stages 1-2: this rank's slice of the parameter inside a flat unit's fp32 master shard
  (:mod:`ds_zero.stage12`), and at stage 2 its slice of the reduce-scattered gradient shard;
* stage 3: this rank's rows of the sharded parameter (:mod:`ds_zero.stage3.params`); parameters under
  the persistence threshold are stage 1's case.

Note: [full getters are collective] From stage 1 on (and for gradients at stage 0, which are averaged
here), a "full" getter assembles the value with one all-reduce over the data-parallel group (each
rank adds its disjoint slice into zeros, so the sum is exact): every rank must call it, for the same
parameters in the same order, as in DeepSpeed. Setters and "local" accessors never communicate.

Note: [when gradients are valid] The grad accessors are valid between ``backward`` at the
accumulation boundary and ``step`` (which consumes the gradients and frees them). They return the
gradient averaged over the data-parallel ranks, as the optimizer will see it; under fp16 it is still
multiplied by the loss scale (the step unscales), as in DeepSpeed. At stage 0 and stage 1 the
reduction happens inside ``step``, so the getter averages a copy itself; at stage 2 the shards were
reduce-scattered as backward ran; at stage 3 FSDP2 reduce-scattered each unit's gradient. One
difference from DeepSpeed follows: at stage 0 DeepSpeed has all-reduced ``param.grad`` by the end of
``backward``, so its getter reads it without communicating and one rank alone may call it; here the
stage-0 getter communicates, so every rank must call it there too.

Note: [setters] ``safe_set_full_fp32_param`` writes the fp32 master (this rank's slice); the model's
(low-precision or gathered) weights follow at the next publish, i.e. the next ``step``, as in
DeepSpeed — except where the master *is* the model's storage (fp32 stage 0, this rank's shard at
stages 1-3), which changes at once. Unlike DeepSpeed, a setter given a parameter no trainer owns
raises instead of doing nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

import ds_comm
from ds_zero.dtensor_check import is_dtensor

_BACKREF = "_ds_zero_trainer"


def link_parameters(trainer: Any) -> None:
    """Tag every parameter of ``trainer.module`` with a weak reference to ``trainer``.

    Weak (Note [hooks hold the trainer weakly] in :mod:`ds_zero.trainer`): a parameter outliving its
    trainer must not keep the trainer, its shards and optimizer state alive.
    """
    ref = weakref.ref(trainer)
    for p in trainer.module.parameters():
        setattr(p, _BACKREF, ref)


def trainer_of(param: Tensor) -> Any | None:
    """The live trainer that owns ``param`` (None if none does)."""
    ref = getattr(param, _BACKREF, None)
    return None if ref is None else ref()


# --- where a parameter's fp32 master lives -----------------------------------------------------------
@dataclass
class _Place:
    """One parameter's master on this rank: ``holder`` (whole, or a flat shard) and the slices of the
    flattened parameter it holds, as (start, end, offset in holder)."""

    trainer: Any
    param: Tensor
    holder: Tensor
    slices: list[tuple[int, int, int]]
    kind: str  # "whole" (stage 0), "units" (flat units: stages 1-2, stage-3 persistent), "rows" (stage-3 DTensor)
    part: Any = None  # the ShardedParams owning a "units" parameter
    unit: int = -1  # that unit's index in ``part`` (its gradient shard)
    group: Any = None  # the data-parallel group the parameter is reduced over

    @property
    def numel(self) -> int:
        return int(self.param.numel())

    @property
    def shape(self) -> torch.Size:
        return self.param.shape


def _in_units(trainer: Any, part: Any, param: Tensor, group: Any) -> _Place | None:
    for u, unit in enumerate(part.units):
        for slot, p in zip(unit.slots, unit.params):
            if p is param:
                slices = [(a, b, off) for s, a, b, off in unit.owned_slices() if s.index == slot.index]
                return _Place(
                    trainer, param, part.holders[u], slices, "units", part=part, unit=u, group=group
                )
    return None


def _locate(param: Tensor) -> _Place | None:
    trainer = trainer_of(param)
    if trainer is None:
        return None
    masters = trainer.masters
    if hasattr(masters, "unit_params"):  # stage 3
        masters._sync()  # the holders must alias the live rows (Note in Stage3Params._sync)
        for p, holder, shard in zip(masters.unit_params, masters.unit_holders, masters.unit_shards):
            if p is param:
                slices = [(a, b, off) for _s, a, b, off in shard.owned_slices()]
                return _Place(trainer, param, holder, slices, "rows", group=trainer.shard_group)
        persistent = masters.persistent
        return None if persistent is None else _in_units(trainer, persistent, param, trainer.shard_group)
    if hasattr(masters, "units"):  # stages 1-2
        return _in_units(trainer, masters, param, trainer.shard_group)
    try:
        holder = masters.holder(param)
    except KeyError:  # a frozen parameter the optimizer does not hold
        return None
    if not any(holder is h for h in masters.holders):
        return None
    group = getattr(trainer.reducer, "group", None)
    return _Place(trainer, param, holder, [(0, int(holder.numel()), 0)], "whole", group=group)


def _require(param: Tensor) -> _Place:
    place = _locate(param)
    if place is None:
        raise ValueError(
            f"parameter of shape {tuple(param.shape)} is not trained by a ZeRO optimizer (it is frozen, not in "
            "the optimizer, or its engine is gone)"
        )
    return place


def _require_stage3(param: Tensor) -> _Place:
    place = _require(param)
    if place.trainer.policy.stage != 3:
        raise ValueError(
            f"the local accessors are only defined for ZeRO-3 partitioned parameters (this one is trained at "
            f"ZeRO stage {place.trainer.policy.stage}); use the safe_get_full_* functions"
        )
    return place


# --- communication helpers ------------------------------------------------------------------------------
def _world(group: Any) -> int:
    return ds_comm.get_world_size(group) if torch.distributed.is_initialized() else 1


def _comm_device(group: Any, fallback: torch.device) -> torch.device:
    if _world(group) == 1:
        return fallback
    from ds_zero.stage3.shards import comm_device

    return comm_device(group)


def _any_rank(flag: bool, group: Any) -> bool:
    """Whether ``flag`` holds on any rank of ``group`` (every rank must call)."""
    if _world(group) == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device(group, torch.device("cpu")))
    ds_comm.all_reduce(t, op=ds_comm.ReduceOp.MAX, group=group)
    return bool(t.item())


def _assemble(place: _Place, source: Tensor | None) -> Tensor:
    """The full flattened parameter from every rank's slices of ``source`` (aligned with the holder)."""
    device = _comm_device(place.group, place.holder.device)
    buf = torch.zeros(place.numel, dtype=torch.float32, device=device)
    if source is not None:
        flat = source.detach().reshape(-1)
        for start, end, off in place.slices:
            buf[start:end].copy_(flat[off : off + end - start])
    if place.kind != "whole" and _world(place.group) > 1:
        ds_comm.all_reduce(buf, group=place.group)
    return buf.view(place.shape).to(_result_device(place))


def _result_device(place: _Place) -> torch.device:
    device = place.param.device
    return device if device.type != "meta" else place.holder.device


def _averaged(place: _Place, grad: Tensor | None) -> Tensor | None:
    """A data-parallel average of every rank's local gradient (what the step's reduction will produce)."""
    if not _any_rank(grad is not None, place.group):
        return None
    world = _world(place.group)
    device = _comm_device(place.group, place.holder.device)
    out = (
        torch.zeros(place.numel, dtype=torch.float32, device=device)
        if grad is None
        else grad.detach().reshape(-1).to(device=device, dtype=torch.float32, copy=True)
    )
    if world > 1:
        ds_comm.all_reduce(out, group=place.group)
        if place.trainer.policy.reduce.average:
            out.div_(world)
    return out.view(place.shape).to(_result_device(place))


def _write_slices(place: _Place, target: Tensor, value: Tensor) -> None:
    flat_value = value.detach().reshape(-1)
    if flat_value.numel() != place.numel:
        raise ValueError(f"value has {flat_value.numel()} elements; the parameter has {place.numel}")
    flat = target.detach().view(-1)
    with torch.no_grad():
        for start, end, off in place.slices:
            flat[off : off + end - start].copy_(flat_value[start:end])


def _local_view(place: _Place, source: Tensor) -> Tensor:
    """This rank's part of the flattened parameter inside ``source`` (a view; empty if it holds none)."""
    flat = source.detach().view(-1)
    if not place.slices:
        return flat[:0]
    start, end, off = place.slices[0]  # a rank's shard is contiguous: at most one slice per parameter
    return flat[off : off + end - start]


# --- fp32 parameters ---------------------------------------------------------------------------------------
def safe_get_full_fp32_param(param: Tensor) -> Tensor | None:
    """The full fp32 master of ``param`` on every rank (None if no ZeRO optimizer trains it).

    Collective from stage 1 on (Note [full getters are collective])."""
    place = _locate(param)
    if place is None:
        return None
    if place.kind == "whole":
        return place.holder.detach().float().clone().view(place.shape)
    return _assemble(place, place.holder)


def safe_set_full_fp32_param(param: Tensor, value: Tensor) -> None:
    """Write ``value`` (the full parameter) into this rank's fp32 master of ``param`` (Note [setters])."""
    place = _require(param)
    _write_slices(place, place.holder, value.to(torch.float32))


# --- optimizer state ------------------------------------------------------------------------------------------
def _state_tensor(place: _Place, key: str) -> Tensor | None:
    swapper = getattr(place.trainer, "swapper", None)  # NVMe offload: the states live in files
    state = (
        swapper.peek(place.holder)
        if swapper is not None
        else place.trainer.optimizer.state.get(place.holder, {})
    )
    value = state.get(key)
    return value if torch.is_tensor(value) else None


def safe_get_full_optimizer_state(param: Tensor, optim_state_key: str) -> Tensor | None:
    """The full fp32 optimizer state ``optim_state_key`` (e.g. ``"exp_avg"``) of ``param`` on every rank.

    None before the optimizer first stepped, or if no ZeRO optimizer trains ``param``. Collective from
    stage 1 on (Note [full getters are collective])."""
    place = _locate(param)
    if place is None:
        return None
    tensor = _state_tensor(place, optim_state_key)
    if place.kind == "whole":
        return None if tensor is None else tensor.detach().clone()
    if not _any_rank(tensor is not None, place.group):
        return None
    if tensor is not None and tensor.numel() != place.holder.numel():  # a per-group scalar such as "step"
        _assemble(place, None)  # keep the collective sequence identical on every rank
        return tensor.detach().clone()
    return _assemble(place, tensor)


def safe_set_full_optimizer_state(param: Tensor, value: Tensor, optim_state_key: str) -> None:
    """Write ``value`` (full-parameter sized) into this rank's slice of the optimizer state."""
    place = _require(param)
    _refuse_nvme(place, "safe_set_full_optimizer_state")
    tensor = _state_tensor(place, optim_state_key)
    if tensor is None:
        raise KeyError(
            f"the optimizer holds no state {optim_state_key!r} for this parameter (has it stepped yet?)"
        )
    _write_slices(place, tensor, value)


def _refuse_nvme(place: _Place, call: str) -> None:
    if getattr(place.trainer, "swapper", None) is not None:
        raise NotImplementedError(
            f"{call} with offload_optimizer.device 'nvme' is not built (the states live in "
            "files; the getters read a copy)"
        )


# --- gradients (Note [when gradients are valid]) -----------------------------------------------------------
def _grad_shard(place: _Place) -> Tensor | None:
    return place.part.reduction.grad_shards[place.unit]


def _reduced_at_backward(place: _Place) -> bool:
    """Stage 2 units: gradients are reduce-scattered into shards while backward runs."""
    return place.kind == "units" and getattr(place.trainer.reducer, "stage", None) == 2


def safe_get_full_grad(param: Tensor) -> Tensor | None:
    """The full gradient of ``param``, averaged over the data-parallel ranks, on every rank (None when
    there is none). Collective at every stage (Note [full getters are collective])."""
    place = _locate(param)
    if place is None:
        return param.grad
    if place.kind == "whole":
        return _averaged(place, place.holder.grad)
    if place.kind == "rows":
        grad = param.grad
        if not _any_rank(grad is not None, place.group):
            return None
        from ds_zero.stage3.shards import gather_rows

        # FSDP2 reduce-scatters a unit's gradients on every rank together: some rank has one, so this one does
        assert grad is not None, "a stage-3 gradient exists on another rank but not on this one"
        full = gather_rows(grad) if is_dtensor(grad) else grad.detach()
        return full.float().to(_result_device(place))
    if _reduced_at_backward(place):
        shard = _grad_shard(place)
        if not _any_rank(shard is not None, place.group):
            return None
        return _assemble(place, shard)
    return _averaged(place, param.grad)  # stage 1 (and stage-3 persistent): full local gradients


def safe_set_full_grad(param: Tensor, value: Tensor) -> None:
    """Make ``value`` (the full, averaged gradient, the same on every rank) the gradient ``step`` will use."""
    place = _require(param)
    trainer = place.trainer
    world = _world(place.group)
    # The step's reduction averages (or sums) identical values across ranks: pre-divide a sum.
    unreduced = value if trainer.policy.reduce.average or world == 1 else value / world
    if place.kind == "whole":
        holder = place.holder
        if holder.grad is None:
            holder.grad = (
                unreduced.detach().to(device=holder.device, dtype=holder.dtype).clone().view_as(holder)
            )
        else:
            holder.grad.copy_(unreduced.view_as(holder.grad))
        _mark_stale(trainer.reducer, holder)
    elif place.kind == "rows":
        if not is_dtensor(param.grad):
            raise ValueError("this parameter has no gradient to set (call after backward, before step)")
        from ds_zero.stage3.shards import write_rows

        write_rows(param.grad, value.view(place.shape))
    elif _reduced_at_backward(place):
        shards = place.part.reduction.grad_shards
        if shards[place.unit] is None:
            unit = place.part.units[place.unit]
            shards[place.unit] = torch.zeros(
                unit.shard_numel, dtype=place.part.reduction.grad_dtype, device=place.holder.device
            )
        _write_slices(place, shards[place.unit], value)
    else:
        grad = unreduced.detach().to(device=param.device, dtype=param.dtype).view(place.shape)
        if param.grad is None:
            param.grad = grad.clone()
        else:
            param.grad.copy_(grad)


def _mark_stale(reducer: Any, holder: Tensor) -> None:
    """A stage-0 bucket that already took ``holder``'s old gradient must take the new one at ``finish``."""
    where = getattr(reducer, "_where", {}).get(id(holder))
    if where is not None:
        bucket = where[0]
        if bucket.started:
            bucket.stale = True


def safe_update_full_grad_vectorized(
    param_list: list[nn.Parameter], update_func: Callable[[Tensor, Tensor], Tensor]
) -> None:
    """Replace each parameter's full gradient ``g`` by ``update_func(g, param)`` (collective, as the getter)."""
    for p in param_list:
        grad = safe_get_full_grad(p)
        if grad is not None:
            safe_set_full_grad(p, update_func(grad, p))


# --- local (this rank's partition; ZeRO-3 only, as in DeepSpeed) -----------------------------------------
def safe_get_local_fp32_param(param: Tensor) -> Tensor:
    """This rank's partition of ``param``'s fp32 master (flat; a view: writes reach the master)."""
    place = _require_stage3(param)
    return _local_view(place, place.holder)


def safe_set_local_fp32_param(param: Tensor, value: Tensor) -> None:
    """Overwrite this rank's partition of the fp32 master with ``value`` (shaped like the local partition)."""
    view = safe_get_local_fp32_param(param)
    with torch.no_grad():
        view.copy_(value.detach().reshape(-1))


def safe_get_local_optimizer_state(param: Tensor, optim_state_key: str) -> Tensor | None:
    """This rank's partition of the optimizer state ``optim_state_key`` (a view), None before the first step."""
    place = _require_stage3(param)
    tensor = _state_tensor(place, optim_state_key)
    return None if tensor is None else _local_view(place, tensor)


def safe_set_local_optimizer_state(param: Tensor, value: Tensor, optim_state_key: str) -> None:
    """Overwrite this rank's partition of the optimizer state ``optim_state_key``."""
    _refuse_nvme(_require_stage3(param), "safe_set_local_optimizer_state")
    view = safe_get_local_optimizer_state(param, optim_state_key)
    if view is None:
        raise KeyError(
            f"the optimizer holds no state {optim_state_key!r} for this parameter (has it stepped yet?)"
        )
    with torch.no_grad():
        view.copy_(value.detach().reshape(-1))


def _local_grad_place(param: Tensor) -> _Place:
    place = _require_stage3(param)
    if place.kind != "rows":
        raise ValueError(
            "this parameter is below stage3_param_persistence_threshold: it is whole on every rank and its "
            "gradient is reduced inside step(); use safe_get_full_grad"
        )
    return place


def safe_get_local_grad(param: Tensor) -> Tensor | None:
    """This rank's partition of ``param``'s reduced gradient (flat), None when there is none."""
    _local_grad_place(param)
    grad = param.grad
    if grad is None:
        return None
    from ds_zero.stage3.params import _local

    return _local(grad).reshape(-1)


def safe_set_local_grad(param: Tensor, value: Tensor) -> None:
    """Overwrite this rank's partition of ``param``'s reduced gradient."""
    local = safe_get_local_grad(param)
    if local is None:
        raise ValueError("this parameter has no gradient to set (call after backward, before step)")
    with torch.no_grad():
        local.copy_(value.detach().reshape(-1))


# --- overflow --------------------------------------------------------------------------------------------------
def gradients_overflow(trainer: Any) -> bool:
    """Whether any gradient the trainer holds right now is inf/NaN on any rank (collective over the
    trainer's data-parallel group): model gradients, master gradients and reduced gradient shards."""
    tensors: list[Tensor] = []
    for p in trainer.module.parameters():
        if p.grad is not None:
            g = p.grad
            from ds_zero.stage3.params import _local

            tensors.append(_local(g))
    tensors.extend(h.grad for h in trainer.masters.holders if h.grad is not None)
    for part in (trainer.masters, getattr(trainer.masters, "persistent", None)):
        reduction = getattr(part, "_reducer", None)
        if reduction is not None:
            tensors.extend(s for s in reduction.grad_shards if s is not None)
    found = any(bool((~torch.isfinite(t)).any()) for t in tensors if t.numel())
    group = trainer.shard_group if trainer.sharded_grads else getattr(trainer.reducer, "group", None)
    return _any_rank(found, group)


__all__ = [
    "gradients_overflow",
    "link_parameters",
    "safe_get_full_fp32_param",
    "safe_get_full_grad",
    "safe_get_full_optimizer_state",
    "safe_get_local_fp32_param",
    "safe_get_local_grad",
    "safe_get_local_optimizer_state",
    "safe_set_full_fp32_param",
    "safe_set_full_grad",
    "safe_set_full_optimizer_state",
    "safe_set_local_fp32_param",
    "safe_set_local_grad",
    "safe_set_local_optimizer_state",
    "safe_update_full_grad_vectorized",
    "trainer_of",
]
