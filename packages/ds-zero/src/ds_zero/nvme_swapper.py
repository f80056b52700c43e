"""ZeRO-Infinity optimizer-state offload to NVMe (``offload_optimizer.device: nvme``, stages 1-3).

The trainer's inner optimizer steps one *sub-group* at a time: each parameter it holds (a flat master
shard per unit at stages 1-2, a unit's flat holder at stage 3). Between steps a sub-group's optimizer
states (every state tensor shaped like its parameter: Adam's ``exp_avg``/``exp_avg_sq``) live in one
file under ``<nvme_path>/ds_zero_optimizer/``; the scalar ``step`` stays in memory. Around the step:

* read: the sub-group's file into an aligned buffer from a reused pool (``buffer_count``), the state
  tensors bound as views of that buffer, so the optimizer updates them in place (no copy);
  ``pipeline_read`` starts the next sub-groups' reads (``buffer_count - 2`` of them, at least one)
  before this one steps;
* write: the buffer back to the file (direct I/O, Note [aligned buffers] in :mod:`ds_kernels.aio`) and
  the state tensors dropped; ``pipeline_write`` lets the write finish behind the next sub-group's step.

So at most ``buffer_count`` sub-groups' states are in memory at once, however large the model.
A checkpoint of an NVMe run is the same file as any other run's and loads with or without NVMe
offload; it is written and read one sub-group at a time (Note [bounded checkpoint I/O]).
:meth:`OptimizerStateSwapper.resident` brings every state in, for the callers that want them all.

Note: [bounded checkpoint I/O] Saving and loading never hold more than one sub-group's states in
private memory, so a run whose states only fit on NVMe can also save and resume (RLIMIT_DATA, which
bounds private writable memory, is what the tests set). Save: :meth:`~OptimizerStateSwapper.reading`
reads one sub-group at a time into one reused buffer, and each saved slice is copied (:meth:`~OptimizerStateSwapper.spill_copy`) into
its own file-backed shared mapping under the swap folder, unlinked as soon as it is mapped, so the
kernel pages it out to that file under pressure and it disappears with the tensor; ``torch.save``
writes the checkpoint from those mappings. Load: the engine maps the rank files shared
(``torch.load(mmap=True)``, Note [mapped optimizer files] in ds_zero.deepspeed_format) and each
sub-group's state is filled in a pool buffer (:meth:`~OptimizerStateSwapper.fresh_state`) and written
to its swap file at once (:meth:`~OptimizerStateSwapper.store`).
Each slice gets its own file because ``torch.save`` writes a view's whole storage.

Note: [lost states] A sub-group's states leave memory as its write starts. If the write fails (a full
disk, an I/O error) they are gone: every later step or ``state_dict`` of this swapper raises
:class:`NvmeStatesLost` naming the file, so no checkpoint is ever written from them and the last one
stays as it was.

Note: [first step] The optimizer creates its states lazily at its first step (torch's Adam: zeros
like the parameter); they are copied once into a pool buffer and written. From then on they only
ever exist as views of pool buffers.
"""

from __future__ import annotations

import itertools
import os
import shutil
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import torch
from torch import Tensor

from ds_kernels.aio import ALIGNMENT, AioEngine, align_up, aligned_empty
from ds_zero.policy import NvmePolicy

_serial = itertools.count()


class NvmePathError(OSError):
    """``nvme_path`` is missing, not a directory, or not writable."""


class NvmeStatesLost(RuntimeError):
    """A swap write failed, so some optimizer states exist nowhere any more: training and saving from
    this engine are refused (Note [lost states]); restore from the last checkpoint."""


@dataclass(frozen=True)
class _Entry:
    key: str
    dtype: torch.dtype
    shape: torch.Size
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _Layout:
    entries: tuple[_Entry, ...]
    nbytes: int  # aligned total (the file's and the buffer's size)


def swappable(state: dict, param: Tensor) -> dict[str, Tensor]:
    """The state tensors shaped like ``param`` (what goes to NVMe); scalars stay in memory."""
    return {k: v for k, v in state.items() if torch.is_tensor(v) and v.dim() > 0 and v.shape == param.shape}


def _layout_of(tensors: dict[str, Tensor]) -> _Layout:
    entries, offset = [], 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        entries.append(_Entry(key, t.dtype, t.shape, offset, nbytes))
        offset += align_up(nbytes)
    return _Layout(tuple(entries), offset)


def make_swap_folder(
    nvme_path: str,
    rank: int,
    *,
    key: str = "offload_optimizer",
    subfolder: str = "ds_zero_optimizer",
    serial: int | None = None,
) -> str:
    """A fresh folder for this rank's files under ``<nvme_path>/<subfolder>``; :class:`NvmePathError`
    naming the config ``key`` and the path."""
    if not nvme_path:
        raise NvmePathError(f"zero_optimization.{key}.device is 'nvme' but nvme_path is not set")
    if not os.path.isdir(nvme_path):
        raise NvmePathError(
            f"zero_optimization.{key}.nvme_path {nvme_path!r} does not exist or is not a directory"
        )
    count = next(_serial) if serial is None else serial
    folder = os.path.join(nvme_path, subfolder, f"rank{rank}.pid{os.getpid()}.{count}")
    try:
        os.makedirs(folder)
        probe = os.path.join(folder, ".probe")
        with open(probe, "wb") as f:
            f.write(b"\0" * ALIGNMENT)
        os.remove(probe)
    except OSError as exc:
        raise NvmePathError(
            exc.errno,
            f"zero_optimization.{key}.nvme_path {nvme_path!r} is not writable: {exc.strerror}",
            nvme_path,
        ) from exc
    return folder


class OptimizerStateSwapper:
    """Steps ``optimizer`` one sub-group at a time with its states swapped from NVMe (module doc)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, policy: NvmePolicy, rank: int, pin: bool = False
    ) -> None:
        self.optimizer = optimizer
        self.policy = policy
        self.pin = pin
        self.folder = make_swap_folder(policy.path, rank)
        self.engine = AioEngine(
            block_size=policy.block_size, queue_depth=policy.queue_depth, intra_op_parallelism=policy.threads
        )
        self.layouts: dict[int, _Layout] = {}  # id(param) -> where its states sit in its file
        self.paths: dict[int, str] = {}
        self._free: list[Tensor] = []  # pool buffers not in use
        self._made = 0
        self._writes: deque[tuple[Future, Tensor]] = deque()
        self._lost: str | None = None  # Note [lost states]
        self._filling: dict[int, Tensor] = {}  # id(param) -> the pool buffer fresh_state gave it
        # one buffer for the sub-group stepping, one for the write behind it, the rest read ahead
        self._read_ahead = max(1, policy.buffer_count - 2)
        self._finalizer = weakref.finalize(self, _cleanup, self.engine, self.folder)

    # --- the pool -------------------------------------------------------------------------------------
    def _acquire(self, nbytes: int) -> Tensor:
        while not self._free and self._writes and self._made >= max(self.policy.buffer_count, 2):
            self._finish_oldest_write()
        buf = self._free.pop() if self._free else None
        if buf is None:
            self._made += 1
        if buf is None or buf.numel() < nbytes:
            buf = aligned_empty(nbytes, pin=self.pin)
        return buf

    def _release(self, buf: Tensor) -> None:
        self._free.append(buf)

    def _finish_oldest_write(self) -> None:
        fut, buf = self._writes.popleft()
        try:
            fut.result()
        except BaseException as exc:
            self._lost = self._lost or str(exc)
            raise
        finally:
            self._release(buf)

    def _check_intact(self) -> None:
        if self._lost is not None:
            raise NvmeStatesLost(
                f"optimizer states swapped to NVMe were lost ({self._lost}); this engine can "
                "neither step nor save: restart from the last checkpoint"
            )

    def _finish_writes(self) -> None:
        while self._writes:
            self._finish_oldest_write()

    # --- one sub-group --------------------------------------------------------------------------------
    def _start_read(self, p: Tensor) -> tuple[Future, Tensor] | None:
        layout = self.layouts.get(id(p))
        if layout is None or swappable(self.optimizer.state.get(p, {}), p):
            return None  # never written yet (Note [first step]) or already in memory
        buf = self._acquire(layout.nbytes)
        return self.engine.submit(buf[: layout.nbytes], self.paths[id(p)], 0, write=False), buf

    def _bind(self, p: Tensor, read: tuple[Future, Tensor] | None) -> Tensor | None:
        """Finish ``read`` and put the state tensors back into the optimizer as views of its buffer."""
        if read is None:
            return None
        fut, buf = read
        try:
            fut.result()
        except BaseException:
            self._release(buf)
            raise
        state = self.optimizer.state[p]
        for e in self.layouts[id(p)].entries:
            state[e.key] = buf[e.offset : e.offset + e.nbytes].view(e.dtype).view(e.shape)
        return buf

    def _write_out(self, p: Tensor, buf: Tensor | None) -> None:
        """Write ``p``'s state tensors (views of ``buf`` unless they are new) and drop them from memory."""
        state = self.optimizer.state.get(p, {})
        tensors = swappable(state, p)
        if not tensors:
            if buf is not None:
                self._release(buf)
            return
        layout = _layout_of(tensors)
        if buf is None or buf.numel() < layout.nbytes:
            if buf is not None:
                self._release(buf)
            buf = self._acquire(layout.nbytes)
        for e in layout.entries:
            dst = buf[e.offset : e.offset + e.nbytes]
            src = tensors[e.key]
            if src.data_ptr() != dst.data_ptr():  # Note [first step], or an optimizer that rebinds its state
                dst.view(e.dtype).view(e.shape).copy_(src)
        self.layouts[id(p)] = layout
        path = self.paths.setdefault(id(p), os.path.join(self.folder, f"subgroup{len(self.paths)}.bin"))
        for key in tensors:
            del state[key]
        self._writes.append((self.engine.submit(buf[: layout.nbytes], path, 0, write=True), buf))
        if not self.policy.pipeline_write:
            self._finish_writes()

    # --- what the trainer calls -----------------------------------------------------------------------
    def step(self) -> None:
        """The inner optimizer's step, one sub-group at a time, states read before and written after."""
        self._check_intact()
        opt = self.optimizer
        groups = opt.param_groups
        subs = [(g, p) for g in groups for p in g["params"] if p.grad is not None]
        saved = [g["params"] for g in groups]
        reads: dict[int, tuple[Future, Tensor] | None] = {}
        try:
            for i, (group, p) in enumerate(subs):
                if i not in reads:
                    reads[i] = self._start_read(p)
                if self.policy.pipeline_read:  # read ahead: as many sub-groups as the pool leaves room for
                    for j in range(i + 1, min(i + 1 + self._read_ahead, len(subs))):
                        if j not in reads:
                            reads[j] = self._start_read(subs[j][1])
                buf = self._bind(p, reads.pop(i))
                # The inner step sees one group holding one parameter; per-group settings (lr, betas)
                # are the group's own dict, so a scheduler's writes and the optimizer's reads agree.
                opt.param_groups = [group]
                group["params"] = [p]
                try:
                    opt.step()
                finally:
                    opt.param_groups = groups
                    for g, ps in zip(groups, saved):
                        g["params"] = ps
                self._write_out(p, buf)
        finally:
            for read in reads.values():  # an error left a read-ahead in flight
                if read is not None:
                    read[0].exception()
                    self._release(read[1])
            self._finish_writes()

    def swap_in_all(self) -> None:
        """Read every sub-group's states into memory (fresh buffers, not the pool)."""
        self._finish_writes()
        self._check_intact()
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                layout = self.layouts.get(id(p))
                if layout is None or swappable(self.optimizer.state.get(p, {}), p):
                    continue
                buf = aligned_empty(layout.nbytes)
                self._bind(
                    p, (self.engine.submit(buf[: layout.nbytes], self.paths[id(p)], 0, write=False), buf)
                )

    def swap_out_all(self) -> None:
        """Write every state tensor held in memory to NVMe and drop it."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                self._write_out(p, None)
        self._finish_writes()
        self._free.clear()  # buffers sized for the whole model go back to the allocator

    def peek(self, p: Tensor, into: Tensor | None = None) -> dict:
        """``p``'s optimizer state with its swapped tensors read into fresh memory (a copy: writing to it
        changes nothing on NVMe), or into ``into`` when it is large enough. What
        ``safe_get_*_optimizer_state`` read."""
        self._finish_writes()
        self._check_intact()
        state = dict(self.optimizer.state.get(p, {}))
        layout = self.layouts.get(id(p))
        if layout is None or swappable(state, p):
            return state
        buf = into if into is not None and into.numel() >= layout.nbytes else aligned_empty(layout.nbytes)
        self.engine.submit(buf[: layout.nbytes], self.paths[id(p)], 0, write=False).result()
        for e in layout.entries:
            state[e.key] = buf[e.offset : e.offset + e.nbytes].view(e.dtype).view(e.shape)
        return state

    @contextmanager
    def reading(self) -> Iterator[Callable[[Tensor], dict]]:
        """:meth:`peek` for a checkpoint save, every read into one buffer kept for the whole save: a
        result is valid until the next read. A fresh buffer per read would fragment the heap, the small
        objects the save keeps landing in the freed holes, and grow private memory by a sub-group per
        read (Note [bounded checkpoint I/O])."""
        size = max((layout.nbytes for layout in self.layouts.values()), default=0)
        scratch = aligned_empty(size) if size else None
        yield lambda p: self.peek(p, into=scratch)

    def fresh_state(self, p: Tensor, keys: list[str]) -> dict[str, Tensor]:
        """Zeroed state tensors ``keys``, shaped like ``p``, as views of one pool buffer, to be filled
        and handed to :meth:`store` (a checkpoint load; from the pool, for the reason :meth:`reading`
        gives)."""
        layout = _layout_of({k: p for k in keys})
        buf = self._acquire(layout.nbytes)
        self._filling[id(p)] = buf
        state = {}
        for e in layout.entries:
            state[e.key] = buf[e.offset : e.offset + e.nbytes].view(e.dtype).view(e.shape).zero_()
        return state

    def store(self, p: Tensor, state: dict) -> None:
        """Take ``p``'s whole optimizer state (a checkpoint load) and write its tensors to NVMe now,
        keeping at most ``buffer_count`` sub-groups' in memory (Note [bounded checkpoint I/O])."""
        self._check_intact()
        self.optimizer.state[p] = state
        self._write_out(p, self._filling.pop(id(p), None))
        if self._writes and len(self._writes) >= max(1, self.policy.buffer_count - 1):
            self._finish_oldest_write()

    def spill_copy(self, t: Tensor) -> Tensor:
        """A copy of ``t`` in a file-backed shared mapping under the swap folder (:func:`spill_copy`)."""
        return spill_copy(t, self.folder)

    @contextmanager
    def resident(self) -> Iterator[None]:
        """Every optimizer state in memory inside (checkpoint save/load), back on NVMe after."""
        self.swap_in_all()
        try:
            yield
        finally:
            self.swap_out_all()

    def close(self) -> None:
        """Stop the I/O threads and delete this rank's swap files."""
        try:
            self._finish_writes()
        finally:
            self._finalizer()


def spill_copy(t: Tensor, folder: str) -> Tensor:
    """A copy of ``t`` in a file-backed shared mapping under ``folder``, its file already unlinked, so
    the kernel pages it out to that file under memory pressure and it disappears with the tensor (Note
    [bounded checkpoint I/O]); a CPU tensor, contiguous, shaped like ``t``."""
    nbytes = t.numel() * t.element_size()
    if nbytes == 0:
        return t.detach().to("cpu", copy=True)
    path = os.path.join(folder, f"spill{next(_serial)}.bin")
    try:
        with open(path, "wb") as f:
            os.ftruncate(f.fileno(), nbytes)
        out = torch.from_file(path, shared=True, size=t.numel(), dtype=t.dtype)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)
    return out.view(t.shape).copy_(t.detach())


def _cleanup(engine: AioEngine, folder: str) -> None:
    engine.close()
    shutil.rmtree(folder, ignore_errors=True)
