"""Bucketed gradient all-reduce for replicated data parallelism (stage 0).

Gradients are averaged in buckets of about ``bucket_numel`` elements, filled in the order gradients
become ready in backward (reverse registration order). A bucket is launched (asynchronously) as soon
as every gradient in it is final, so communication overlaps the rest of backward; :meth:`finish`
launches whatever is left, waits, and writes the averaged gradients back.

Note: [only at the boundary] Nothing is communicated while ``sync`` is off: micro-batches before the
accumulation boundary only accumulate locally. The caller turns ``sync`` on for the boundary's backward.

Note: [finish is the source of truth] Correctness never depends on hooks firing: ``finish`` reduces
every bucket not yet reduced, with the gradients as they are at that moment. Hooks only start buckets
early. A gradient that changes after its bucket was launched (a second backward in the same
micro-step) marks the bucket stale and ``finish`` reduces it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ds_comm
import torch
from torch import Tensor

from ds_zero.policy import ReducePolicy


@dataclass
class _Bucket:
    holders: list[Tensor]
    offsets: list[int]
    numel: int
    dtype: torch.dtype
    buffer: Tensor | None = None
    ready: set[int] = field(default_factory=set)
    work: Any = None
    launched: bool = False
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
        if current and (size + h.numel() > bucket_numel or h.dtype != current[0].dtype
                        or h.device != current[0].device):
            close()
        current.append(h)
        size += h.numel()
    close()
    return buckets


class BucketedAllReduce:
    """Average the ``.grad`` of ``holders`` across ``group`` in buckets (see the module notes)."""

    def __init__(self, holders: list[Tensor], *, policy: ReducePolicy, group: Any = None,
                 reduce_dtype: torch.dtype | None = None) -> None:
        self.group = group
        self.world_size = ds_comm.get_world_size(group)
        self.policy = policy
        self.sync = True
        self.buckets = plan_buckets(holders, policy.bucket_numel, reduce_dtype)
        self._where = {id(h): (b, i) for b in self.buckets for i, h in enumerate(b.holders)}

    @property
    def active(self) -> bool:
        """Whether there is anyone to communicate with."""
        return self.world_size > 1

    def mark_ready(self, holder: Tensor) -> None:
        """``holder.grad`` is final for this backward; launch its bucket once the bucket is complete."""
        if not (self.sync and self.active and self.policy.overlap):
            return
        bucket, index = self._where[id(holder)]
        if bucket.launched:
            bucket.stale = True
            return
        bucket.ready.add(index)
        if len(bucket.ready) == len(bucket.holders):
            self._launch(bucket)

    def _launch(self, bucket: _Bucket) -> None:
        if bucket.buffer is None:
            bucket.buffer = torch.empty(bucket.numel, dtype=bucket.dtype, device=bucket.holders[0].device)
        buf = bucket.buffer
        for h, off in zip(bucket.holders, bucket.offsets):
            dst = buf[off:off + h.numel()]
            if h.grad is None:
                dst.zero_()
            else:
                dst.copy_(h.grad.reshape(-1))
        pre = self._pre_factor()
        if pre != 1.0:
            buf.mul_(pre)
        bucket.work = ds_comm.all_reduce(buf, group=self.group, async_op=True)
        bucket.launched = True

    def _pre_factor(self) -> float:
        if not self.policy.average:
            return 1.0
        if self.policy.prescale:
            return 1.0 / self.world_size
        return 1.0 / self.policy.predivide_factor

    def _post_factor(self) -> float:
        if not self.policy.average or self.policy.prescale:
            return 1.0
        return self.policy.predivide_factor / self.world_size

    def finish(self) -> None:
        """Reduce every bucket not yet reduced, wait, and write the averaged gradients back."""
        if not self.active:
            return
        for bucket in self.buckets:
            if bucket.launched and bucket.stale:
                bucket.work.wait()
                bucket.launched = False
            if not bucket.launched:
                self._launch(bucket)
        post = self._post_factor()
        for bucket in self.buckets:
            bucket.work.wait()
            if post != 1.0:
                bucket.buffer.mul_(post)
            self._write_back(bucket)
            bucket.work, bucket.launched, bucket.stale = None, False, False
            bucket.ready.clear()

    @staticmethod
    def _write_back(bucket: _Bucket) -> None:
        assert bucket.buffer is not None
        for h, off in zip(bucket.holders, bucket.offsets):
            view = bucket.buffer[off:off + h.numel()].view_as(h)
            if h.grad is None and not bool(view.any()):
                continue  # no rank produced a gradient: keep None, as a single process would
            if view.dtype == h.dtype:
                h.grad = view  # the bucket's memory becomes the gradient: no copy
            elif h.grad is None:
                h.grad = view.to(h.dtype)
            else:
                h.grad.copy_(view)
