"""Reduce-scatter, all-gather, all-reduce and broadcast through shared memory for the ranks of one host.

Note: [shared-memory collectives] ZeRO stages 1-3 move every gradient through a reduce-scatter and
every parameter through an all-gather. Between processes of one host gloo sends those bytes through
loopback TCP, several copies and a handshake per chunk; here they go through one ``/dev/shm`` segment
that every rank maps (:func:`ds_zero.shm_allreduce.shared_segment`). The segment has two sets of
rows, one row per rank in each, of the largest tensor the caller announced (:func:`setup`) within
[:data:`MIN_ROW_BYTES`, :data:`ROW_BYTES`]; a collective runs in rounds over chunks of its
tensor, alternating the sets, with one barrier (:class:`ds_zero.shm_allreduce.PipeBarrier`) a round:

* reduce-scatter, ``out`` = this rank's ``1/N`` of the sum: each rank copies chunk ``c`` of every
  rank's share of its input into its row, then, past the barrier, adds up its own share's chunk from
  every row, in rank order (so the sum's bits do not depend on which rank computes it);
* all-gather: each rank copies chunk ``c`` of its shard into its row, then reads chunk ``c`` of every
  rank's row into its place in ``out``;
* all-reduce (stage 0's gradient buckets, in place), for a few ranks: each rank copies chunk ``c``
  of its tensors into its row, then adds up chunk ``c`` of every row, in rank order, back into them;
* broadcast (the engine's replicated start): the source copies the next row's worth of its tensors'
  bytes into its row, and the others copy it out.

Each rank writes and reads about the size of the tensor once, whatever the number of ranks. One
barrier a round is enough because rounds alternate sets: a rank can run at most one round ahead of
the slowest (its next barrier waits), so it never overwrites a row that another rank still reads. The
fixed segment bounds the shared memory whatever the model size. ``DS_ZERO_SHM_ALLREDUCE=0`` turns the
path off (c10d's collectives then serve); ``benchmarks/dp_step_phases.py`` measures the difference.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

import ds_comm
from ds_comm import comms_log
from ds_zero import shm_allreduce

ROW_BYTES = 8 << 20  # per rank and set: chunks this size stay in cache between the write and the reads
MIN_ROW_BYTES = 64 << 10  # rows for small models (setup's nbytes): a tiny model maps a tiny segment
MAX_RANKS = 64  # each rank writes and reads ~the tensor's size once, so ranks cost only barrier messages


class HostCollectives:
    """Reduce-scatter and all-gather across ``group`` through one shared segment (see the module note).

    Collective to construct: every rank of ``group`` builds it at the same point."""

    def __init__(self, group: Any = None, *, row_bytes: int = ROW_BYTES) -> None:
        # The group itself is not kept: Note [exit teardown] in ds_comm.init (a process group that
        # outlives destroy_process_group is torn down by interpreter exit, which can abort the rank).
        self.world = ds_comm.get_world_size(group)
        self.rank = ds_comm.get_rank(group)
        self.row_bytes = row_bytes
        self.sets = shm_allreduce.shared_segment(
            2 * self.world * row_bytes, torch.uint8, group=group, name="ds_zero_collectives"
        ).view(2, self.world, row_bytes)
        self.barrier = shm_allreduce.PipeBarrier(group=group, timeout=ds_comm.DEFAULT_TIMEOUT.total_seconds())
        self.round = 0

    def _rows(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(every rank's row, this rank's row) of this round's set, as ``dtype`` elements."""
        rows = self.sets[self.round % 2].view(dtype)
        return rows, rows[self.rank]

    def _chunk(self, dtype: torch.dtype, per_row: int) -> int:
        """Elements of each of ``per_row`` pieces that fit a row together."""
        return max(1, self.row_bytes // dtype.itemsize // per_row)

    def reduce_scatter(self, out: Tensor, inp: Tensor, *, average: bool = False) -> Tensor:
        """``out`` (``inp.numel() / N`` elements) = this rank's share of the sum (or mean) of ``inp``."""
        start = time.perf_counter()
        shard = out.numel()
        if inp.numel() != shard * self.world or inp.dtype != out.dtype:
            raise ValueError(
                f"reduce_scatter: input of {inp.numel()} {inp.dtype} for an output of {shard} "
                f"{out.dtype} across {self.world} ranks"
            )
        src = inp.view(self.world, shard)
        dst = out.view(-1)  # view, not reshape: a copy would swallow the result
        chunk = self._chunk(inp.dtype, self.world)
        for begin in range(0, shard, chunk):
            n = min(chunk, shard - begin)
            rows, mine = self._rows(inp.dtype)
            mine[: self.world * n].view(self.world, n).copy_(src[:, begin : begin + n])
            self.barrier.wait()  # every rank's chunk of this round is written
            part = rows[:, self.rank * n : (self.rank + 1) * n]
            target = dst[begin : begin + n]
            torch.add(part[0], part[1], out=target)
            for r in range(2, self.world):
                target.add_(part[r])
            self.round += 1
        if average:
            dst.div_(self.world)
        self._log("reduce_scatter_tensor", inp, start)
        return out

    def all_reduce_(
        self,
        tensors: Sequence[Tensor],
        *,
        dtype: torch.dtype | None = None,
        scale_in: float = 1.0,
        scale_out: float = 1.0,
    ) -> None:
        """Each of ``tensors`` (flat, contiguous: a bucket's gradients) becomes, in place, ``scale_out`` x
        the sum over ranks of ``scale_in`` x that tensor, summed in ``dtype`` (default: the first
        tensor's), whatever the tensors' own dtypes.

        The tensors are taken as one index space, a row's worth a round: each rank writes its chunk
        (scaled, cast to ``dtype``) into its row, and past the barrier adds up every row's chunk, in rank
        order, and writes the result back over the chunk it came from while it is still in cache. No
        flattened copy and no output buffer: the gradients hold their own sum. Every rank reads every
        row, so this serves a few ranks (:data:`ds_zero.shm_allreduce.MAX_RANKS`)."""
        start = time.perf_counter()
        if any(t.dim() != 1 or not t.is_contiguous() for t in tensors):
            raise ValueError(
                "all_reduce_: every tensor must be flat and contiguous (its sum is written back)"
            )
        if not tensors:
            return
        dtype = dtype or tensors[0].dtype
        spans = _Spans(tensors)
        chunk = self._chunk(dtype, 1)
        # Where a tensor's dtype differs the sum is made in ``dtype`` here, then cast once into it.
        scratch = torch.empty(min(chunk, spans.total), dtype=dtype) if spans.mixed(dtype) else None
        for begin in range(0, spans.total, chunk):
            n = min(chunk, spans.total - begin)
            rows, mine = self._rows(dtype)
            pieces = spans.over(begin, begin + n)
            for tensor, lo, hi, at in pieces:
                if scale_in != 1.0:
                    torch.mul(tensor[lo:hi], scale_in, out=mine[at : at + hi - lo])
                else:
                    mine[at : at + hi - lo].copy_(tensor[lo:hi])
            self.barrier.wait()  # every rank's chunk of this round is written
            for tensor, lo, hi, at in pieces:
                direct = tensor.dtype == dtype
                target = tensor[lo:hi] if direct else scratch[: hi - lo]  # type: ignore[index]
                # rank order: the same bits on every rank
                torch.add(rows[0, at : at + hi - lo], rows[1, at : at + hi - lo], out=target)
                for r in range(2, self.world):
                    target.add_(rows[r, at : at + hi - lo])
                if scale_out != 1.0:
                    target.mul_(scale_out)
                if not direct:
                    tensor[lo:hi].copy_(target)
            self.round += 1
        if comms_log.LOG.enabled:
            nbytes = spans.total * dtype.itemsize
            comms_log.LOG.add(
                comms_log.CommRecord("all_reduce", nbytes, time.perf_counter() - start, self.world)
            )

    def all_gather(self, out: Tensor, inp: Tensor) -> Tensor:
        """``out`` (``N * inp.numel()`` elements) = every rank's ``inp``, in rank order."""
        start = time.perf_counter()
        shard = inp.numel()
        if out.numel() != shard * self.world or inp.dtype != out.dtype:
            raise ValueError(
                f"all_gather: output of {out.numel()} {out.dtype} for an input of {shard} "
                f"{inp.dtype} across {self.world} ranks"
            )
        src = inp.view(-1)
        dst = out.view(self.world, shard)  # view, not reshape: a copy would swallow the result
        chunk = self._chunk(inp.dtype, 1)
        for begin in range(0, shard, chunk):
            n = min(chunk, shard - begin)
            rows, mine = self._rows(inp.dtype)
            mine[:n].copy_(src[begin : begin + n])
            self.barrier.wait()  # every rank's chunk of this round is written
            dst[:, begin : begin + n].copy_(rows[:, :n])
            self.round += 1
        self._log("all_gather_into_tensor", out, start)
        return out

    def broadcast(self, tensors: Sequence[Tensor], src: int = 0) -> None:
        """Every rank's ``tensors`` become group rank ``src``'s, in place (contiguous tensors, the same
        shapes and dtypes on every rank). The tensors' bytes stream through ``src``'s row, packed across
        tensors, so many small tensors still take few rounds; no flattened copy is made on either side."""
        start = time.perf_counter()
        if any(not t.is_contiguous() for t in tensors):
            raise ValueError("broadcast: every tensor must be contiguous")
        pieces: list[tuple[Tensor, int]] = []  # (this round's piece of a tensor, its offset in the row)
        used = nbytes = 0
        for tensor in tensors:
            data = tensor.detach().view(-1).view(torch.uint8)
            nbytes += data.numel()
            begin = 0
            while begin < data.numel():
                row = self.sets[self.round % 2, src]
                n = min(self.row_bytes - used, data.numel() - begin)
                piece = data[begin : begin + n]
                if self.rank == src:
                    row[used : used + n].copy_(piece)
                pieces.append((piece, used))
                used, begin = used + n, begin + n
                if used == self.row_bytes:
                    self._deliver(pieces, src)
                    used = 0
        if pieces:
            self._deliver(pieces, src)
        if comms_log.LOG.enabled:
            comms_log.LOG.add(
                comms_log.CommRecord("broadcast", nbytes, time.perf_counter() - start, self.world)
            )

    def _deliver(self, pieces: list[tuple[Tensor, int]], src: int) -> None:
        """End a broadcast round: past the barrier, the other ranks copy ``src``'s row into their pieces."""
        row = self.sets[self.round % 2, src]
        self.barrier.wait()  # src's row of this round is written
        if self.rank != src:
            for piece, offset in pieces:
                piece.copy_(row[offset : offset + piece.numel()])
        pieces.clear()
        self.round += 1

    def _log(self, name: str, tensor: Tensor, start: float) -> None:
        if comms_log.LOG.enabled:
            nbytes = tensor.numel() * tensor.element_size()
            comms_log.LOG.add(comms_log.CommRecord(name, nbytes, time.perf_counter() - start, self.world))


class _Spans:
    """Several flat tensors taken as one index space, cut into the pieces that a range of it covers."""

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.tensors = list(tensors)
        self.starts: list[int] = []
        self.total = 0
        for t in self.tensors:
            self.starts.append(self.total)
            self.total += t.numel()
        self._next = 0  # ranges are asked for in increasing order: no tensor before this one overlaps

    def mixed(self, dtype: torch.dtype) -> bool:
        """Whether some tensor is not of ``dtype``."""
        return any(t.dtype != dtype for t in self.tensors)

    def over(self, begin: int, end: int) -> list[tuple[Tensor, int, int, int]]:
        """``(tensor, lo, hi, at)`` for each tensor overlapping ``[begin, end)``: its elements
        ``[lo, hi)`` sit at ``begin + at`` of the index space."""
        pieces = []
        index = self._next
        while index < len(self.tensors):
            start = self.starts[index]
            size = self.tensors[index].numel()
            lo, hi = max(begin, start), min(end, start + size)
            if lo < hi:
                pieces.append((self.tensors[index], lo - start, hi - start, lo - begin))
            if start + size > end:
                break  # this tensor goes on in the next range
            index += 1
        self._next = index
        return pieces


# Weak keys: a strong reference would keep the group's gloo threads alive past destroy_process_group
# (Note [exit teardown] in ds_comm.init), and an entry goes with its group, so a re-initialised world
# never finds the rows of the last one.
_BY_GROUP: weakref.WeakKeyDictionary[Any, HostCollectives | None] = weakref.WeakKeyDictionary()


def _key(group: Any) -> Any:
    return group if group is not None else ds_comm.get_world_group()


def setup(
    group: Any, tensors_on: torch.device | str = "cpu", nbytes: int = ROW_BYTES
) -> HostCollectives | None:
    """Set up (collective: every rank of ``group`` calls it at the same point, with the same ``nbytes``)
    and return the shared-memory collectives of ``group``, or None where c10d must serve (tensors not on
    the CPU, ranks on several hosts, one rank, the switch off).

    ``nbytes``: the largest tensor the caller will reduce-scatter or gather. Rows are sized to it within
    [:data:`MIN_ROW_BYTES`, :data:`ROW_BYTES`], so a small model maps a small segment; a later call
    with a larger size grows them. Bigger tensors are still served, in more rounds."""
    if torch.device(tensors_on).type != "cpu":
        return None
    key, want = _key(group), min(ROW_BYTES, max(MIN_ROW_BYTES, nbytes))
    if key not in _BY_GROUP:
        ok = shm_allreduce.usable(group, 2 * ds_comm.get_world_size(group) * want, max_ranks=MAX_RANKS)
        _BY_GROUP[key] = HostCollectives(group, row_bytes=want) if ok else None
    elif (current := _BY_GROUP[key]) is not None and current.row_bytes < want:
        _BY_GROUP[key] = HostCollectives(group, row_bytes=want)
    return _BY_GROUP[key]


def get(group: Any, tensors_on: torch.device | str = "cpu") -> HostCollectives | None:
    """The collectives :func:`setup` made for ``group`` (None if it made none: c10d serves). Not collective."""
    if torch.device(tensors_on).type != "cpu" or not _BY_GROUP:
        return None
    return _BY_GROUP.get(_key(group))


def transport_storages() -> set[int]:
    """``data_ptr`` of every shared segment alive: transport buffers (bounded by ``2 * N * ROW_BYTES`` a
    host, shared by its N ranks), which memory accounting of model states leaves out."""
    return {h.sets.untyped_storage().data_ptr() for h in _BY_GROUP.values() if h is not None}


def reset() -> None:
    """Forget every group's collectives (after ``destroy_process_group``: the groups are gone)."""
    _BY_GROUP.clear()


__all__ = [
    "HostCollectives",
    "MAX_RANKS",
    "MIN_ROW_BYTES",
    "ROW_BYTES",
    "get",
    "reset",
    "setup",
    "transport_storages",
]
