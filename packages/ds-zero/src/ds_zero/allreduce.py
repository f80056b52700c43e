"""Bucketed gradient all-reduce for replicated data parallelism (stage 0).

Gradients are averaged in buckets of about ``bucket_numel`` elements, filled in the order gradients
become ready in backward (reverse registration order). A bucket is started as soon as every gradient
in it is final: its gradients are copied (and scaled, Note [scaling]) into the bucket, and with the
c10d transport an asynchronous all-reduce is launched, overlapping the rest of backward.
:meth:`finish` starts whatever is left, completes every bucket, and makes the averaged gradients the
holders' ``.grad`` (views of the bucket: no copy back).

Transports: up to :data:`ds_zero.shm_allreduce.MAX_RANKS` ranks all on one host sum through the
host's shared-memory rows (Note [shared-memory all-reduce] in :mod:`ds_zero.shm_allreduce`,
:meth:`ds_zero.shm_collectives.HostCollectives.all_reduce_`); otherwise c10d's ``all_reduce`` (gloo,
NCCL, ...) through ds_comm.

Note: [bounded segment] The shared-memory sum runs in rounds of one row (8 MiB at most) taken
straight from the gradients and written straight back into them, so the shared memory is a fixed few
MiB a rank whatever the model and there is no bucket buffer: the gradients are held once, not twice.
Nothing is written before the step: that sum needs every rank at once, so it could not overlap
backward anyway. (An earlier version gave each bucket rows of its full size, two sets of them, and a
private output buffer: at 100M parameters on 2 ranks 1.6 GB of /dev/shm and 400 MB a rank more, all
of it faulted in during the first steps.)

Note: [only at the boundary] Nothing is communicated while ``sync`` is off: micro-batches before the
accumulation boundary only accumulate locally. The caller turns ``sync`` on for the boundary's backward.

Note: [finish is the source of truth] Correctness never depends on hooks firing: ``finish`` reduces
every bucket not yet started, with the gradients as they are at that moment. Hooks only start buckets
early. A gradient that changes after its bucket started (a second backward in the same micro-step)
marks the bucket stale and ``finish`` starts it again.

Note: [scaling] DeepSpeed divides by ``predivide_factor`` before the sum and by
``world_size / predivide_factor`` after it (or by ``world_size`` before it with ``prescale``). A factor
that is a power of two commutes exactly with floating-point rounding, so when the after-sum factor is
one it is applied during the copy into the bucket instead: the same bits, one pass over memory fewer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import ds_comm
from ds_zero import shm_allreduce, shm_collectives
from ds_zero.policy import ReducePolicy
from ds_zero.shm_collectives import HostCollectives


@dataclass
class _Bucket:
    holders: list[Tensor]
    offsets: list[int]
    numel: int
    dtype: torch.dtype
    buffer: Tensor | None = None
    ready: set[int] = field(default_factory=set)
    work: Any = None
    started: bool = False
    stale: bool = False


def plan_buckets(holders: list[Tensor], bucket_numel: int, reduce_dtype: torch.dtype | None) -> list[_Bucket]:
    """Buckets over ``holders`` (already in readiness order), one dtype and device per bucket."""
    buckets: list[_Bucket] = []
    current: list[Tensor] = []
    size = 0

    def close() -> None:
        nonlocal current, size
        if current:
            offsets, running = [], 0
            for h in current:
                offsets.append(running)
                running += h.numel()
            buckets.append(_Bucket(current, offsets, running, reduce_dtype or current[0].dtype))
        current, size = [], 0

    for h in holders:
        if current and (
            size + h.numel() > bucket_numel or h.dtype != current[0].dtype or h.device != current[0].device
        ):
            close()
        current.append(h)
        size += h.numel()
    close()
    return buckets


def _power_of_two(x: float) -> bool:
    return x > 0 and math.frexp(x)[0] == 0.5


class BucketedAllReduce:
    """Average the ``.grad`` of ``holders`` across ``group`` in buckets (see the module notes)."""

    def __init__(
        self,
        holders: list[Tensor],
        *,
        policy: ReducePolicy,
        group: Any = None,
        reduce_dtype: torch.dtype | None = None,
        transport: str = "auto",
        average_over: int | None = None,
    ) -> None:
        self.group = group
        self.world_size = ds_comm.get_world_size(group)
        # Ranks to average over; more than the group holds for expert gradients (ds_zero.group_reduction).
        self.average_over = average_over or self.world_size
        self.holders = holders
        self.policy = policy
        self.sync = True
        self.host: HostCollectives | None = None
        itemsize = (reduce_dtype or (holders[0].dtype if holders else torch.float32)).itemsize
        if (
            self.active
            and transport in ("auto", "shm")
            and self.world_size <= shm_allreduce.MAX_RANKS
            and all(h.device.type == "cpu" for h in holders)
        ):
            largest = max((h.numel() for h in holders), default=0) * itemsize
            self.host = shm_collectives.setup(group, "cpu", nbytes=largest)  # collective
        self.transport = "c10d" if self.host is None else "shm"
        # Note [adaptive buckets] in ds_zero.policy
        bucket_numel = policy.bucket_numel_for(on_host=self.host is not None, itemsize=itemsize)
        self.buckets = plan_buckets(holders, bucket_numel, reduce_dtype)
        self._where = {id(h): (b, i) for b in self.buckets for i, h in enumerate(b.holders)}
        self.pre, self.post = self._factors()

    @property
    def active(self) -> bool:
        """Whether there is anyone to communicate with."""
        return self.world_size > 1

    @property
    def wants_ready_signals(self) -> bool:
        """Whether ``mark_ready`` does useful early work: c10d buckets start their all-reduce, overlapping
        backward. The shared-memory sum needs every rank at once, so it all runs in ``finish`` (Note
        [bounded segment])."""
        return self.active and self.policy.overlap and self.host is None

    def _factors(self) -> tuple[float, float]:
        """(before the sum, after the sum), per Note [scaling]."""
        before, after = self.policy.averaging_factors(self.average_over)  # the one rule, as multipliers
        pre, post = 1.0 / before, 1.0 / after
        if _power_of_two(post):
            return pre * post, 1.0
        return pre, post

    def mark_ready(self, holder: Tensor) -> None:
        """``holder.grad`` is final for this backward; start its bucket once the bucket is complete."""
        if not (self.sync and self.wants_ready_signals):
            return
        bucket, index = self._where[id(holder)]
        if bucket.started:
            bucket.stale = True
            return
        bucket.ready.add(index)
        if len(bucket.ready) == len(bucket.holders):
            self._start(bucket)

    def _copy_in(self, buf: Tensor, holder: Tensor, offset: int) -> None:
        dst = buf[offset : offset + holder.numel()]
        if holder.grad is None:
            dst.zero_()
        elif self.pre != 1.0:
            torch.mul(holder.grad.reshape(-1), self.pre, out=dst)
        else:
            dst.copy_(holder.grad.reshape(-1))

    def _fill(self, bucket: _Bucket) -> Tensor:
        """Copy the bucket's gradients into its buffer (made where there is none) and return it."""
        if bucket.buffer is None:
            bucket.buffer = torch.empty(bucket.numel, dtype=bucket.dtype, device=bucket.holders[0].device)
        for h, off in zip(bucket.holders, bucket.offsets):
            self._copy_in(bucket.buffer, h, off)
        return bucket.buffer

    def _start(self, bucket: _Bucket) -> None:
        buffer = self._fill(bucket)
        bucket.work = ds_comm.all_reduce(buffer, group=self.group, async_op=True)
        bucket.started = True

    def _reduce_on_host(self, bucket: _Bucket) -> None:
        """Sum the bucket's gradients through the host's shared rows, in place (Note [bounded segment]),
        scaled on the way in and out. A holder without a gradient takes part with zeros, and keeps None
        where no rank had one, as a single process would."""
        assert self.host is not None
        missing = []
        for h in bucket.holders:
            if h.grad is None:
                h.grad = torch.zeros_like(h)
                missing.append(h)
            elif not h.grad.is_contiguous():
                h.grad = h.grad.contiguous()  # the sum is written back through a flat view
        flat = [h.grad.view(-1) for h in bucket.holders]  # type: ignore[union-attr]  # all set above
        self.host.all_reduce_(flat, dtype=bucket.dtype, scale_in=self.pre, scale_out=self.post)
        for h in missing:
            if not bool(h.grad.any()):  # type: ignore[union-attr]
                h.grad = None

    def finish(self) -> None:
        """Reduce every bucket not yet reduced and make the averaged gradients the holders' ``.grad``."""
        if not self.active:
            if self.sync and self.policy.average and self.average_over != self.world_size:
                for h in self.holders:  # alone in the group, yet averaged over more ranks (expert gradients)
                    if h.grad is not None:
                        h.grad.div_(self.average_over)
            return
        if self.host is not None:
            for bucket in self.buckets:
                self._reduce_on_host(bucket)
                bucket.ready.clear()
            return
        for bucket in self.buckets:
            if bucket.started and bucket.stale:
                if bucket.work is not None:
                    bucket.work.wait()
                bucket.started = False
                bucket.ready.clear()  # every gradient is taken in again
            if not bucket.started:
                self._start(bucket)
        for bucket in self.buckets:
            bucket.work.wait()
            assert bucket.buffer is not None  # _start filled it, and nothing releases it until here
            reduced = bucket.buffer
            if self.post != 1.0:
                reduced.mul_(self.post)
            self._write_back(bucket, reduced)
            bucket.work, bucket.started, bucket.stale = None, False, False
            bucket.ready.clear()

    @staticmethod
    def _write_back(bucket: _Bucket, reduced: Tensor) -> None:
        for h, off in zip(bucket.holders, bucket.offsets):
            view = reduced[off : off + h.numel()].view_as(h)
            if h.grad is None and not bool(view.any()):
                continue  # no rank produced a gradient: keep None, as a single process would
            if view.dtype == h.dtype:
                h.grad = view  # the bucket's memory becomes the gradient: no copy
            elif h.grad is None:
                h.grad = view.to(h.dtype)
            else:
                h.grad.copy_(view)
