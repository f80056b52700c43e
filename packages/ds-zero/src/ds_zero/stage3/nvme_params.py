"""ZeRO-Infinity parameter offload to NVMe (``offload_param.device: nvme``, stage 3, and
``zero.Init(remote_device="nvme")``).

Note: [parameter swapping] With ``offload_param: {device: nvme}`` the shard units are built as for
``device: cpu`` (FSDP2's CPUOffloadPolicy: sharded fp32 rows on the CPU, optimizer step on the CPU).
FSDP2 keeps each sharded parameter's rows in one padded flat tensor (``FSDPParam._sharded_param_data``)
of which the DTensor's local tensor, and the optimizer's master (:mod:`ds_zero.stage3.params`), are
views. :class:`ParamSwapper` writes a unit's rows to one file under ``<nvme_path>/ds_zero_params/`` and
releases their storage with ``untyped_storage().resize_(0)``; reading back resizes the same storage
and copies into it, so every view stays valid (FSDP2 frees its gathered parameters the same way).
All I/O goes through :class:`ds_kernels.aio.AioEngine` via ``buffer_count`` aligned staging buffers
(direct I/O needs aligned addresses, Note [aligned buffers] in :mod:`ds_kernels.aio`): a release copies
the rows into a buffer, frees the storage and writes the buffer behind; a read fills a buffer and the
rows are copied out when the unit is needed. A unit whose file already holds its rows (read back for
a forward or backward and not changed since) is released without writing.

When the rows are in memory:

* forward: a hook that runs before FSDP2's pre-forward all-gather brings in the unit and the units
  FSDP2 will prefetch from it, and starts reading the next units in forward order (up to
  ``buffer_count - 1`` reads in flight); after the unit's forward its rows are released.
* backward: FSDP2 gathers a unit in a gradient hook on the unit's outputs, registered in its
  post-forward hook; ours is registered on the same tensors just before (a prepend forward hook), so
  it runs first and brings in the unit and the one FSDP2 prefetches (the previous in post-forward
  order); units whose backward gathers are all done are released.
* the optimizer step runs one unit at a time (:meth:`ParamSwapper.step`): read in (the next units
  read ahead), stepped, written back. With ``bf16_master_weights_and_grads`` (whose fp32 step copies
  every parameter first) the step brings every unit in instead.
* checkpoint save/load, ``full_state_dict``: one unit at a time (Note [bounded parameter checkpoints]);
  ``GatheredParameters`` brings in the units it touches, which the next forward releases (writing
  them); ``load_state_dict`` writes each unit back as its load ends; a plain ``module.state_dict()``
  brings in one unit at a time and returns copies of its rows (Note [state_dict of swapped rows]).
* ``max_in_cpu``: units (in model order) whose rows on this rank total at most this many elements are
  never swapped.

Note: [bounded parameter checkpoints] A save or load holds one unit's rows at a time, so a model whose
weights only fit on NVMe can be saved and resumed (tested under RLIMIT_DATA, as Note [bounded checkpoint
I/O] in ds_zero.nvme_swapper). :meth:`ParamSwapper.one_at_a_time` hands the caller ``bring(tensor)``,
which reads in the unit that tensor's rows belong to and sends the previous one back (writing it when the
caller writes). Save: the gathered module rank 0 writes (``full_state_dict``) brings each parameter's
unit before gathering it and keeps the full copy in a file-backed mapping (``spill_copy``), and the
optimizer file's slices (``shard_state_dict``) bring each master's unit and spill their copies too;
``torch.save`` streams from those mappings. Load: the model states file is mapped shared, not read
(Note [mapped optimizer files] in ds_zero.deepspeed_format); ``load_state_dict`` brings a unit in at its
first parameter (the load pre-hook) and writes it back when the unit's subtree is loaded (a load
post-hook), and the optimizer slices are written master by master through ``bring``.

What is not bounded: ``engine.destroy()`` brings every unit back so the module stays usable; gradients
(shard-sized, alive from backward to the step) are not swapped (DeepSpeed 0.19.8 swaps the fp32 copies
it makes of them at the accumulation boundary, while the partitions it accumulates into stay in
memory); with ``bf16_master_weights_and_grads`` the step brings every unit in.

Overlap: reads run on the I/O threads while the current unit computes or steps (forward, backward and
step read ahead), and writes run behind; the copies between staging buffers and rows are on the
training thread.

``zero.Init(remote_device="nvme")`` (:class:`InitNvmeStore`): each partition is written to its own file
(synchronously) right after it is made and its storage released, so building the model holds one
module's full parameters at a time; wrapping the model reads each unit's partitions back just before
sharding it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ds_kernels.aio import AioEngine, align_up, aligned_empty
from ds_zero.nvme_swapper import make_swap_folder
from ds_zero.policy import ParamNvmePolicy

_serial = itertools.count()


@dataclass(eq=False)  # compared and hashed by identity
class _Unit:
    """One shard unit's swappable rows and where they sit in its file."""

    index: int
    module: nn.Module
    rows: list[Tensor]  # FSDPParam._sharded_param_data of each parameter (flat, padded)
    offsets: list[int]
    nbytes: int  # aligned file size
    path: str
    keep: bool  # max_in_cpu: never swapped
    resident: bool = True
    on_disk: bool = False  # the file holds the current rows
    read: tuple[Future, Tensor] | None = None
    pending: list[int] = field(default_factory=list)  # post-forward positions still to run backward
    read_for_state_dict: bool = False  # brought in by a state_dict() call, released at its end

    def numel(self) -> int:
        return sum(r.numel() for r in self.rows)


def _unit_rows(unit: nn.Module) -> list[Tensor]:
    state = unit._get_fsdp_state()  # type: ignore[operator]
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is None:
        group = state._fsdp_param_group
        groups = [group] if group is not None else []
    return [fp._sharded_param_data for g in groups for fp in g.fsdp_params]


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class ParamSwapper:
    """Keeps the sharded rows of a stage-3 model's units on NVMe between uses (Note [parameter swapping])."""

    def __init__(self, units: Sequence[nn.Module], *, policy: ParamNvmePolicy, rank: int) -> None:
        self.policy = policy
        self.folder = make_swap_folder(
            policy.path, rank, key="offload_param", subfolder="ds_zero_params", serial=next(_serial)
        )
        self.engine = AioEngine(
            block_size=policy.block_size, queue_depth=policy.queue_depth, intra_op_parallelism=policy.threads
        )
        self._finalizer = weakref.finalize(self, _cleanup, self.engine, self.folder)
        self.root = root = units[-1]
        root._get_fsdp_state()._lazy_init()  # type: ignore[operator]  # FSDP2 re-pads rows here: do it now
        self.units: list[_Unit] = []
        kept = 0
        for unit in units:
            rows = [r for r in _unit_rows(unit) if r.numel()]
            if not rows:
                continue
            offsets, total = [], 0
            for r in rows:
                offsets.append(total)
                total += align_up(_nbytes(r))
            numel = sum(r.numel() for r in rows)
            keep = kept + numel <= policy.max_in_cpu
            kept += numel if keep else 0
            path = os.path.join(self.folder, f"unit{len(self.units)}.bin")
            self.units.append(_Unit(len(self.units), unit, rows, offsets, total, path, keep))
        self._by_module = {id(u.module): u for u in self.units}
        self._buffer_bytes = max((u.nbytes for u in self.units), default=0)
        self._count = max(1, policy.buffer_count)
        self._free: list[Tensor] = []
        self._made = 0
        self._writes: deque[tuple[Future, _Unit, Tensor]] = deque()
        self._reads: deque[_Unit] = deque()
        self.forward_order: list[_Unit] = []
        self._order_known = False
        self._post_order: list[_Unit] = []
        self._in_backward = False
        self.handles: list[Any] = []
        for unit in units:
            u = self._by_module.get(id(unit))
            self.handles.append(unit.register_forward_pre_hook(partial(self._pre_forward, u), prepend=True))
            self.handles.append(unit.register_forward_hook(partial(self._post_forward, u), prepend=True))
        for u in self.units:  # Note [state_dict of swapped rows]
            self.handles.append(u.module.register_state_dict_pre_hook(partial(self._pre_state_dict, u)))
            self.handles.append(u.module.register_state_dict_post_hook(partial(self._post_state_dict, u)))
            self.handles.append(u.module.register_load_state_dict_post_hook(partial(self._post_load, u)))
        self._holding = 0  # resident() blocks open: every unit stays in memory
        self._cursors = 0  # one_at_a_time() blocks open: the caller brings units in itself
        self.release_all()

    # --- buffers ------------------------------------------------------------------------------------
    def _acquire(self) -> Tensor:
        while True:
            if self._free:
                return self._free.pop()
            if self._made < self._count:
                self._made += 1
                return aligned_empty(self._buffer_bytes)
            if self._writes:
                self._finish_oldest_write()
            elif self._reads:
                self._land(self._reads[0])
            else:  # every buffer is held by a read that no one waits for: cannot happen
                raise RuntimeError("ZeRO-3 NVMe parameter swap: no staging buffer free")

    def _finish_oldest_write(self) -> None:
        fut, unit, buf = self._writes.popleft()
        try:
            fut.result()
            unit.on_disk = True
        except BaseException:
            if not unit.resident:  # the rows are still in the buffer: put them back, nothing is lost
                self._restore(unit, buf)
            raise
        finally:
            self._free.append(buf)

    def _restore(self, unit: _Unit, buf: Tensor) -> None:
        for r, off in zip(unit.rows, unit.offsets):
            r.untyped_storage().resize_(_nbytes(r))
            r.view(-1).view(torch.uint8).copy_(buf[off : off + _nbytes(r)])
        unit.resident = True
        unit.on_disk = False

    # --- one unit -----------------------------------------------------------------------------------
    def _start_read(self, unit: _Unit) -> None:
        if unit.resident or unit.read is not None:
            return
        while any(w[1] is unit for w in self._writes):  # its file is being written: let that finish first
            self._finish_oldest_write()
        buf = self._acquire()
        if unit.resident or unit.read is not None:  # _acquire may have landed it
            self._free.append(buf)
            return
        unit.read = (self.engine.submit(buf[: unit.nbytes], unit.path, 0, write=False), buf)
        self._reads.append(unit)

    def _land(self, unit: _Unit) -> None:
        """Finish ``unit``'s read and copy its rows into their storage."""
        assert unit.read is not None
        fut, buf = unit.read
        unit.read = None
        self._reads.remove(unit)
        try:
            fut.result()
            self._restore(unit, buf)
            unit.on_disk = True
        finally:
            self._free.append(buf)

    def ensure(self, unit: _Unit | None) -> None:
        """``unit``'s rows in memory (waiting for its read)."""
        if unit is None or unit.resident:
            return
        if unit.read is None:
            self._start_read(unit)
        if unit.read is not None:
            self._land(unit)

    def release(self, unit: _Unit | None) -> None:
        """Drop ``unit``'s rows from memory, writing them first unless the file already holds them."""
        if unit is None or unit.keep or not unit.resident:
            return
        if unit.on_disk:
            for r in unit.rows:
                r.untyped_storage().resize_(0)
            unit.resident = False
            return
        buf = self._acquire()
        for r, off in zip(unit.rows, unit.offsets):
            buf[off : off + _nbytes(r)].copy_(r.view(-1).view(torch.uint8))
        try:
            write = self.engine.submit(buf[: unit.nbytes], unit.path, 0, write=True)
        except BaseException:  # the file cannot be opened: the rows stay in memory
            self._free.append(buf)
            raise
        for r in unit.rows:  # the write reads the buffer, not the rows
            r.untyped_storage().resize_(0)
        unit.resident = False
        self._writes.append((write, unit, buf))

    def touch(self, module: Any) -> None:
        """Bring in the unit ``module`` (a shard unit) for a write outside forward/backward."""
        unit = self._by_module.get(id(module))
        if unit is not None:
            self.ensure(unit)
            unit.on_disk = False

    def ensure_all(self, *, dirty: bool = True) -> None:
        """Every unit in memory; ``dirty``: they may change (they are written at the next release)."""
        for unit in self.units:
            self.ensure(unit)
            if dirty:
                unit.on_disk = False

    def release_all(self) -> None:
        """Every unit out of memory (except ``max_in_cpu``'s), writes finished."""
        for unit in self.units:
            if unit.read is not None:
                self._land(unit)
            self.release(unit)
        self.flush()

    def flush(self) -> None:
        """Wait for every write in flight."""
        while self._writes:
            self._finish_oldest_write()

    @contextmanager
    def resident(self, *, dirty: bool = True) -> Iterator[None]:
        """Every unit in memory inside, back on NVMe after (``dirty``: they may change, so are written)."""
        self.ensure_all(dirty=dirty)
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding:
                self.release_all()

    @contextmanager
    def one_at_a_time(self, *, dirty: bool) -> Iterator[Callable[[Tensor], None]]:
        """Inside, ``bring(t)`` puts in memory the unit whose rows ``t`` (a row view, a master, or a
        unit's DTensor parameter) views, first sending back the unit brought before it; a tensor of no
        unit brings nothing. ``dirty``: the caller writes the rows, so each is written back when it
        leaves. After the block no unit it brought stays in memory (Note [bounded parameter
        checkpoints]). The state_dict hooks stand aside inside: the caller reads rows itself."""
        owner = {r.untyped_storage()._cdata: u for u in self.units for r in u.rows}
        current: list[_Unit] = []

        def bring(t: Tensor) -> None:
            local = getattr(t, "_local_tensor", t)  # a DTensor parameter: its rows
            unit = owner.get(local.untyped_storage()._cdata)
            if unit is None or (current and current[0] is unit):
                return
            if current:
                self.release(current.pop())
            self.ensure(unit)
            if dirty:
                unit.on_disk = False
            current.append(unit)

        self._cursors += 1
        try:
            yield bring
        finally:
            self._cursors -= 1
            try:
                if current and not self._holding:
                    self.release(current.pop())
            finally:
                self.flush()

    def step(self, optimizer: torch.optim.Optimizer, inner: Callable[[], Any]) -> None:
        """Run ``inner`` (a step of ``optimizer`` over its current groups) one unit at a time: each unit's
        rows are read in (the next ``buffer_count - 1`` read ahead), stepped and written back, so the
        step holds a few units, not the model. Parameters of no unit (the persistent ones) step last.

        Exact for optimizers whose update of a parameter reads only that parameter's own state and
        gradient and its group's settings (Adam, AdamW, SGD, Lion, LAMB's per-parameter trust ratio)."""
        owner = {r.untyped_storage()._cdata: u for u in self.units for r in u.rows}
        groups = optimizer.param_groups
        saved = [list(g["params"]) for g in groups]

        def unit_of(p: Tensor) -> _Unit | None:
            return owner.get(p.untyped_storage()._cdata)

        try:
            for i, unit in enumerate(self.units):
                for ahead in self.units[i + 1 : i + self._count]:
                    if len(self._reads) >= self._count - 1:
                        break
                    self._start_read(ahead)
                self.ensure(unit)
                for g, ps in zip(groups, saved):
                    g["params"] = [p for p in ps if unit_of(p) is unit]
                inner()
                unit.on_disk = False
                self.release(unit)
            for g, ps in zip(groups, saved):
                g["params"] = [p for p in ps if unit_of(p) is None]
            inner()
        finally:
            for g, ps in zip(groups, saved):
                g["params"] = ps
            self.flush()

    def resident_bytes(self) -> int:
        """Bytes of sharded rows in memory now (the quantity this swapper bounds)."""
        return sum(r.untyped_storage().nbytes() for u in self.units for r in u.rows)

    # --- hooks ----------------------------------------------------------------------------------------
    def _pre_forward(self, unit: _Unit | None, module: nn.Module, args: Any) -> None:
        # the root's forward after a backward starts a new iteration (a unit's forward inside backward is
        # an activation-checkpoint recompute, which must not reset the backward's bookkeeping)
        if self._in_backward and module is self.root:
            self._in_backward = False
            self._post_order = []
            for u in self.units:
                u.pending.clear()
        if unit is not None and not self._order_known and unit not in self.forward_order:
            self.forward_order.append(unit)
        self.ensure(unit)
        state = module._get_fsdp_state()  # type: ignore[operator]
        for target in state._states_to_forward_prefetch:  # FSDP2 gathers these in its pre-forward
            for m in target._modules:
                self.ensure(self._by_module.get(id(m)))
        if unit is not None and unit in self.forward_order:
            k = self.forward_order.index(unit)
            for ahead in self.forward_order[k + 1 : k + self._count]:
                if len(self._reads) >= self._count - 1:
                    break
                self._start_read(ahead)

    def _post_forward(self, unit: _Unit | None, module: nn.Module, args: Any, output: Any) -> None:
        if module is self.root:
            self._order_known = True
        if unit is None:
            return
        if torch.is_grad_enabled():
            unit.pending.append(len(self._post_order))
            self._post_order.append(unit)
            tensors = [t for t in _tensors(output) if t.requires_grad]
            for t in tensors:  # before FSDP2's own hook on these tensors (this hook is prepended)
                t.register_hook(partial(self._pre_backward, unit))
        self.release(unit)

    def _pre_backward(self, unit: _Unit, grad: Tensor) -> Tensor:
        self._in_backward = True
        if not unit.pending:
            return grad
        k = unit.pending.pop()
        # FSDP2 gathers this unit, and prefetches the previous one in post-forward order, from the rows
        # only where they are fully resharded (not the root or units kept gathered, not hpZ's slices)
        for needed in (unit, self._post_order[k - 1]) if k > 0 else (unit,):
            if _gathers_from_rows(needed.module):
                self.ensure(needed)
        for j in range(k - 2, max(-1, k - 1 - self._count), -1):
            if len(self._reads) >= self._count - 1:
                break
            self._start_read(self._post_order[j])
        for later in set(self._post_order[k + 1 :]):  # their backward gathers are done
            if not later.pending and later is not unit:
                self.release(later)
        return grad

    # Note: [state_dict of swapped rows] A plain ``module.state_dict()`` (a user's, or a client library's
    # such as Accelerate's ``get_state_dict`` before it gathers) returns detached views of each unit's
    # sharded rows. On a swapped-out unit those views have no storage (reading them reads freed memory),
    # and any view handed out stays tied to the storage that the next release frees again. So a unit's
    # state_dict pre-hook brings its rows in, and its post-hook replaces the entries that view them with
    # copies, then releases the unit (without a write: state_dict changes nothing). Units nest (the root
    # holds every other unit), and each hook sees only its own unit's rows. Inside ``resident()``
    # (checkpoints, ``full_state_dict``) every unit is in memory and stays there: the hooks stand aside.
    def _pre_state_dict(self, unit: _Unit, module: nn.Module, prefix: str, keep_vars: bool) -> None:
        if self._holding or self._cursors or unit.resident:
            return
        self.ensure(unit)
        unit.read_for_state_dict = True

    def _post_state_dict(
        self, unit: _Unit, module: nn.Module, state_dict: dict, prefix: str, meta: Any
    ) -> None:
        if not unit.read_for_state_dict:
            return
        unit.read_for_state_dict = False
        storages = {r.untyped_storage()._cdata for r in unit.rows}
        for key, value in state_dict.items():
            if key.startswith(prefix) and isinstance(value, Tensor) and _storage_of(value) in storages:
                copy = value.detach().clone()
                state_dict[key] = (
                    nn.Parameter(copy, value.requires_grad) if isinstance(value, nn.Parameter) else copy
                )
        self.release(unit)

    def _post_load(self, unit: _Unit, module: nn.Module, incompatible_keys: Any) -> None:
        """After ``load_state_dict`` wrote a unit (its subtree loaded; the load pre-hook brought it in):
        write it back and free its rows, so a load holds the units it is inside, not the model."""
        if not (self._holding or self._cursors):
            self.release(unit)
            self.flush()

    def make_opaque_to_compiler(self) -> None:
        """Have ``torch.compile`` run these hooks eagerly (they do file I/O), as FSDP2 marks its own."""
        import torch._dynamo

        for handle in self.handles:
            table = handle.hooks_dict_ref()
            if table is not None and handle.id in table:
                table[handle.id] = torch._dynamo.disable(table[handle.id])

    def close(self) -> None:
        """Remove the hooks, stop the I/O threads and delete the swap files (rows are brought back first)."""
        for h in self.handles:
            h.remove()
        self.handles.clear()
        try:
            self.ensure_all(dirty=False)
            self.flush()
        finally:
            self._finalizer()


def _storage_of(t: Tensor) -> int:
    """The storage a tensor (a DTensor: its local tensor) views, as an identity."""
    local = getattr(t, "_local_tensor", t)
    return local.untyped_storage()._cdata


def _gathers_from_rows(unit: nn.Module) -> bool:
    """Whether FSDP2's next all-gather of ``unit`` reads its sharded rows (it is resharded all the way)."""
    state = unit._get_fsdp_state()  # type: ignore[operator]
    groups = getattr(state, "_fsdp_param_groups", None)
    if groups is None:
        groups = [state._fsdp_param_group] if state._fsdp_param_group is not None else []
    return any(g._sharded_state.name == "SHARDED" and g._all_gather_result is None for g in groups)


def _tensors(output: Any) -> Iterator[Tensor]:
    if isinstance(output, Tensor):
        yield output
    elif isinstance(output, (list, tuple)):
        for o in output:
            yield from _tensors(o)
    elif isinstance(output, dict):
        for o in output.values():
            yield from _tensors(o)
    elif hasattr(output, "__dataclass_fields__") or hasattr(output, "to_tuple"):
        to_tuple = getattr(output, "to_tuple", None)
        if to_tuple is not None:
            yield from _tensors(to_tuple())


def _cleanup(engine: AioEngine, folder: str) -> None:
    engine.close()
    shutil.rmtree(folder, ignore_errors=True)


# --- zero.Init(remote_device="nvme") -----------------------------------------------------------------
class InitNvmeStore:
    """Partitions written by ``zero.Init(remote_device="nvme")``: each partition goes to its own file
    under ``<nvme_path>/ds_zero_params/`` right after it is made and its storage is released; it is
    read back (:func:`load_partition`) when the model is wrapped or ``GatheredParameters`` needs it."""

    def __init__(self, policy: ParamNvmePolicy, rank: int) -> None:
        self.folder = make_swap_folder(
            policy.path, rank, key="offload_param", subfolder="ds_zero_params", serial=next(_serial)
        )
        self.engine = AioEngine(
            block_size=policy.block_size, queue_depth=policy.queue_depth, intra_op_parallelism=policy.threads
        )
        self._finalizer = weakref.finalize(self, _cleanup, self.engine, self.folder)
        self._count = itertools.count()

    def put(self, param: Tensor, local: Tensor) -> None:
        """Write ``local`` (``param``'s partition) to a new file and release its storage."""
        nbytes = _nbytes(local)
        buf = aligned_empty(nbytes)
        buf[:nbytes].copy_(local.reshape(-1).view(torch.uint8))
        path = os.path.join(self.folder, f"partition{next(self._count)}.bin")
        self.engine.submit(buf, path, 0, write=True).result()
        local.untyped_storage().resize_(0)
        param._ds_nvme_partition = (self, path, nbytes)  # type: ignore[attr-defined]

    def get(self, local: Tensor, path: str, nbytes: int) -> None:
        """Read a partition back into ``local``'s storage."""
        buf = aligned_empty(nbytes)
        self.engine.submit(buf, path, 0, write=False).result()
        local.untyped_storage().resize_(nbytes)
        local.reshape(-1).view(torch.uint8).copy_(buf[:nbytes])


def load_partition(param: Tensor, local: Tensor) -> None:
    """If ``param``'s Init partition ``local`` is on NVMe and released, read it back (it stays in memory)."""
    where = getattr(param, "_ds_nvme_partition", None)
    if where is None or local.untyped_storage().nbytes() or not local.numel():
        return
    store, path, nbytes = where
    store.get(local, path, nbytes)


def drop_partition(param: Tensor) -> None:
    """``param``'s Init partition is no longer needed (the model was wrapped): delete its file."""
    where = getattr(param, "_ds_nvme_partition", None)
    if where is None:
        return
    del param._ds_nvme_partition  # type: ignore[attr-defined]
    with suppress(FileNotFoundError):
        os.remove(where[1])
