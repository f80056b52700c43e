"""``offload_states`` / ``reload_states``: move a trainer's states to host memory between uses, and back.

RLHF loops (OpenRLHF, open-instruct) free the accelerator for generation by moving the training
engine's states off it and back. DeepSpeed names five kinds (:class:`OffloadStateTypeEnum`); here each
maps onto this design's tensors:

* ``optim_states``: every tensor in the inner optimizer's per-parameter state;
* ``hp_params``: the fp32 masters the optimizer steps (stage 0 fp16/bf16: the fp32 copies; stages 1-2
  and stage 3's persistent parameters: the master shards; stage 3: the units' fp32 shards, which are
  the masters, Note [shards are masters] in :mod:`ds_zero.stage3.sharding`);
* ``lp_params``: the low-precision parameters the model computes with (stage 0: the model's
  parameters; stages 1-2 and stage 3's persistent parameters: the flat unit buffers, their
  parameter views rebound);
* ``lp_grads``: gradients held between backward and step (usually none after a step);
* ``contiguous_grad_buffer``: stage 0's all-reduce bucket buffers, scratch between steps: they are
  released rather than copied and come back, empty, at the next reduction.

Note: [one storage, two names] Where two kinds share one storage (fp32 training: the masters *are*
the parameters at stage 0, and alias the flat buffer at stages 1-2), naming either kind moves that
storage once; every view onto it is rebound, so training continues bit-identical.

Every tensor is copied into a new buffer on ``device`` (pinned when asked and the accelerator can
pin), the accelerator copy is dropped, and :meth:`StateOffload.reload` copies each back to the
device it came from. On a CPU accelerator the states already live in host memory: they are still
copied (one code path for every accelerator; no memory is saved there).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ds_accel import get_accelerator
from ds_zero.dtensor_check import is_dtensor


class OffloadStateTypeEnum(str, enum.Enum):
    """The kinds of state ``offload_states(include=...)`` names (DeepSpeed's values)."""

    optim_states = "optim_states"
    hp_params = "hp_params"
    lp_params = "lp_params"
    lp_grads = "lp_grads"
    contiguous_grad_buffer = "contiguous_grad_buffer"


class OffloadDeviceEnum(str, enum.Enum):
    """Where states may be offloaded (DeepSpeed's values; only ``cpu`` moves anything)."""

    none = "none"
    cpu = "cpu"
    nvme = "nvme"


class StatesOffloadedError(RuntimeError):
    """Training was attempted while states were offloaded."""


Restore = Callable[[bool], None]


def _copy_to(t: Tensor, device: torch.device, pin_memory: bool, non_blocking: bool) -> Tensor:
    out = torch.empty_like(t, device=device)
    if pin_memory and device.type == "cpu" and get_accelerator().name != "cpu":
        out = get_accelerator().pin_memory(out)
    return out.copy_(t, non_blocking=non_blocking)


class StateOffload:
    """The states one trainer has moved, and how to put each back (see the module doc)."""

    def __init__(self) -> None:
        self._restores: list[Restore] = []
        self.kinds: set[OffloadStateTypeEnum] = set()

    @property
    def active(self) -> bool:
        """Whether some kinds are offloaded now (even where none of their tensors existed to move)."""
        return bool(self.kinds)

    def offload(
        self,
        trainer: Any,
        include: Iterable[OffloadStateTypeEnum | str] | None,
        device: torch.device,
        pin_memory: bool,
        non_blocking: bool,
    ) -> None:
        """Move the named kinds (all when ``include`` is None) of ``trainer``'s states to ``device``."""
        kinds = (
            {OffloadStateTypeEnum(k) for k in include} if include is not None else set(OffloadStateTypeEnum)
        )
        kinds -= self.kinds  # a kind already offloaded stays where it is
        mover = _Mover(device, pin_memory, non_blocking, self._restores)
        for (
            kind
        ) in OffloadStateTypeEnum:  # a fixed order: shared storages move once (Note [one storage, two names])
            if kind in kinds:
                _KINDS[kind](trainer, mover, kinds)
        self.kinds |= kinds
        if non_blocking:
            get_accelerator().synchronize()

    def reload(self, non_blocking: bool) -> None:
        """Put every offloaded state back where it was."""
        for restore in reversed(self._restores):
            restore(non_blocking)
        self._restores.clear()
        self.kinds.clear()
        if non_blocking:
            get_accelerator().synchronize()


class _Mover:
    """Copies tensors away, remembering how to copy them back; each storage moves once."""

    def __init__(
        self, device: torch.device, pin_memory: bool, non_blocking: bool, restores: list[Restore]
    ) -> None:
        self.device, self.pin, self.non_blocking = device, pin_memory, non_blocking
        self.restores = restores
        self.moved: set[int] = set()

    def first_time(self, t: Tensor) -> bool:
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key in self.moved:
            return False
        self.moved.add(key)
        return True

    def away(self, t: Tensor) -> Tensor:
        return _dtensor_to(t, lambda x: _copy_to(x, self.device, self.pin, self.non_blocking))

    def tensor_slot(self, get: Callable[[], Tensor | None], put: Callable[[Tensor], None]) -> None:
        """Move the tensor ``get()`` returns (if any) and ``put`` its copy in its place."""
        t = get()
        if t is None or not self.first_time(t):
            return
        home = _local_of(t).device
        put(self.away(t))

        def restore(nb: bool) -> None:
            moved = get()
            if moved is None:  # emptied while offloaded (zero_grad dropped a gradient): nothing comes back
                return
            put(_dtensor_to(moved, lambda x: _copy_to(x, home, False, nb)))

        self.restores.append(restore)

    def param(self, p: nn.Parameter) -> None:
        """Move a standalone parameter's data (the Parameter object stays, so optimizer keys hold)."""
        self.tensor_slot(lambda: p.data, lambda t: setattr(p, "data", t))

    def grad(self, p: nn.Parameter) -> None:
        """Move a parameter's gradient, if it has one."""
        self.tensor_slot(lambda: p.grad, lambda t: setattr(p, "grad", t))

    def item(self, container: Any, key: Any) -> None:
        """Move the tensor ``container[key]`` (a dict's value or a list's item)."""
        self.tensor_slot(lambda: container[key], lambda t: container.__setitem__(key, t))


# --- the kinds ---------------------------------------------------------------------------------------
def _optim_states(trainer: Any, mover: _Mover, kinds: set[OffloadStateTypeEnum]) -> None:
    for state in trainer.optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                mover.item(state, key)


def _flat_units(part: Any, mover: _Mover) -> None:
    """Stages 1-2 (and stage 3's persistent part): move each unit's flat buffer, rebind every view."""
    for unit, master in zip(part.units, part.holders):
        if mover.first_time(unit.flat):
            _flat_unit(unit, master, mover)


def _flat_unit(unit: Any, master: nn.Parameter, mover: _Mover) -> None:
    aliased = master.data_ptr() == unit.shard_view().data_ptr()
    home = unit.flat.device

    def rebind(flat: Tensor) -> None:
        unit.flat = flat
        for slot, p in zip(unit.slots, unit.params):
            p.data = flat[slot.offset : slot.offset + slot.numel].view(slot.shape)
        if aliased:
            master.data = unit.shard_view()

    rebind(mover.away(unit.flat))
    mover.restores.append(lambda nb: rebind(_copy_to(unit.flat, home, False, nb)))


def _hp_params(trainer: Any, mover: _Mover, kinds: set[OffloadStateTypeEnum]) -> None:
    masters = trainer.masters
    if hasattr(masters, "unit_params"):  # stage 3: the units' fp32 shards are the masters
        _stage3_shards(masters, mover)
        part = masters.persistent
    elif hasattr(masters, "units"):  # stages 1-2
        part = masters
    else:  # stage 0: fp32 copies (or, in fp32, the model's own parameters)
        for master in masters.holders:
            mover.param(master)
        return
    if part is None:
        return
    if any(m.data_ptr() == u.shard_view().data_ptr() for u, m in zip(part.units, part.holders)):
        _flat_units(part, mover)  # fp32: the masters alias the flat buffers (Note [one storage, two names])
        return
    for master in part.holders:
        mover.param(master)


def _lp_params(trainer: Any, mover: _Mover, kinds: set[OffloadStateTypeEnum]) -> None:
    masters = trainer.masters
    part = masters.persistent if hasattr(masters, "unit_params") else masters
    if part is None:
        return  # stage 3 keeps no low-precision copy between forwards: FSDP2 casts as it gathers
    if hasattr(part, "units"):
        _flat_units(part, mover)
        return
    for p in getattr(part, "all_model_params", part.model_params):
        mover.param(p)


def _lp_grads(trainer: Any, mover: _Mover, kinds: set[OffloadStateTypeEnum]) -> None:
    masters = trainer.masters
    params = list(getattr(masters, "unit_params", [])) + list(
        getattr(masters, "all_model_params", masters.model_params)
    )
    params += list(masters.holders)
    part = masters.persistent if hasattr(masters, "unit_params") else masters
    if part is not None and hasattr(part, "units"):
        params += [p for unit in part.units for p in unit.params]
        reducer = part.reduction
        for i in range(len(reducer.grad_shards)):
            mover.item(reducer.grad_shards, i)
    for p in params:
        mover.grad(p)


def _contiguous_grad_buffer(trainer: Any, mover: _Mover, kinds: set[OffloadStateTypeEnum]) -> None:
    for bucket in getattr(trainer.reducer, "buckets", []):
        if bucket.buffer is not None and not bucket.started:
            bucket.buffer = None  # scratch between steps: released, re-made at the next reduction


def _stage3_shards(masters: Any, mover: _Mover) -> None:
    """Move each unit's sharded fp32 parameters through FSDP2's own ``_apply`` path, which keeps the
    Parameter objects (DTensors are swapped in place) and re-pads FSDP2's all-gather input; the
    optimizer's flat holders re-alias the new rows (``Stage3Params._sync``)."""
    targets = {id(p) for p in masters.unit_params if mover.first_time(_local_of(p))}
    if not targets:
        return
    root = masters.sharded.module
    home = {id(p): _local_of(p).device for p in masters.unit_params if id(p) in targets}

    def apply(where: Callable[[int], torch.device], copy: Callable[[Tensor, torch.device], Tensor]) -> None:
        def fn(t: Tensor) -> Tensor:
            return copy(t, where(id(t))) if id(t) in targets else t

        _apply_keeping_grads(root, fn)
        masters._sync()

    apply(
        lambda _i: mover.device,
        lambda t, d: _dtensor_to(t, lambda x: _copy_to(x, d, mover.pin, mover.non_blocking)),
    )
    mover.restores.append(
        lambda nb: apply(lambda i: home[i], lambda t, d: _dtensor_to(t, lambda x: _copy_to(x, d, False, nb)))
    )


def _local_of(p: Tensor) -> Tensor:
    return p._local_tensor if is_dtensor(p) else p


def _dtensor_to(t: Tensor, copy: Callable[[Tensor], Tensor]) -> Tensor:
    if is_dtensor(t):
        from torch.distributed.tensor import DTensor  # imported already: t is one (ds_zero.dtensor_check)

        return DTensor.from_local(
            copy(t._local_tensor),
            t.device_mesh,
            t.placements,
            run_check=False,
            shape=t.shape,
            stride=t.stride(),
        )
    return copy(t)


def _apply_keeping_grads(module: nn.Module, fn: Callable[[Tensor], Tensor]) -> None:
    """``module._apply(fn)`` (FSDP2 overrides it to re-pad its shards) with the DTensor parameters
    swapped in place, so optimizer and trainer references stay valid."""
    # swap_tensors swaps the Python attributes too: the ds_* attributes ZeRO-3 keeps on each parameter
    # (Note [ds attributes] in ds_zero.stage3.status) are put back on the same objects afterwards.
    attrs = {id(p): (p, dict(p.__dict__)) for p in module.parameters()}
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        module._apply(fn)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)
        for p, saved in attrs.values():
            p.__dict__.update(saved)


_KINDS: dict[OffloadStateTypeEnum, Callable[[Any, _Mover, set[OffloadStateTypeEnum]], None]] = {
    OffloadStateTypeEnum.optim_states: _optim_states,
    OffloadStateTypeEnum.hp_params: _hp_params,
    OffloadStateTypeEnum.lp_params: _lp_params,
    OffloadStateTypeEnum.lp_grads: _lp_grads,
    OffloadStateTypeEnum.contiguous_grad_buffer: _contiguous_grad_buffer,
}
