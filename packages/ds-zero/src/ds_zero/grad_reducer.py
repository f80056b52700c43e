"""Gradient reduction for ZeRO stages 1 and 2: reduce-scatter each unit's gradients into shards.

Stage 2 reduces while backward runs: as each parameter's gradient is final, it is copied into its
unit's bucket and ``p.grad`` is freed; when a unit's last gradient arrives the bucket is
reduce-scattered (asynchronously with ``overlap_comm``) so each rank keeps only its shard. Stage 1
keeps full gradients in ``p.grad`` through accumulation and reduces them all at the step. Both add
into ``grad_shards[unit]``, so accumulation works the same way for both.

Averaging follows DeepSpeed's rule (:meth:`ds_zero.policy.ReducePolicy.averaging_factors`): gradients
are divided by a pre-factor before the sum and by a post-factor after it (on the shard, so it costs 1/N).
"""

from __future__ import annotations

from typing import Any

import torch

import ds_comm
from ds_zero import shm_collectives
from ds_zero.policy import ReducePolicy
from ds_zero.units import FlatUnit


class GradReducer:
    """Owns the gradient buckets and shards of a list of units."""

    def __init__(
        self,
        units: list[FlatUnit],
        *,
        grad_dtype: torch.dtype,
        group: Any,
        policy: ReducePolicy,
        reduce_dtype: torch.dtype | None = None,
        full_grad_dtype: torch.dtype | None = None,
    ) -> None:
        """``grad_dtype``: the dtype gradient shards accumulate in; ``full_grad_dtype`` (stage 1): the
        dtype full gradients accumulate in across micro-batches where it is not the model's, through
        :meth:`hold` (None: they accumulate in ``p.grad``). Note [gradient dtypes] in ds_zero.dtypes."""
        self.units = units
        self.group = group
        self.overlap_comm = policy.overlap
        self.reduce_scatter = policy.reduce_scatter
        self.grad_dtype = grad_dtype
        self.reduce_dtype = reduce_dtype or grad_dtype
        world = units[0].world_size if units else 1
        self.pre, self.post = policy.averaging_factors(world)
        # Units reduced over another group (Note [group reductions]) average over their own count of ranks.
        self._factors = [
            (self.pre, self.post)
            if unit.reduction is None
            else policy.averaging_factors(unit.reduction.average_over)
            for unit in units
        ]
        self.grad_shards: list[torch.Tensor | None] = [None] * len(units)
        self._buckets: dict[int, torch.Tensor] = {}
        self.full_grad_dtype = full_grad_dtype
        self._held: dict[int, torch.Tensor] = {}  # stage 1: unit -> its full gradient in full_grad_dtype
        # in-flight reductions: (work, unit, output shard, bucket kept alive until the work completes)
        self._pending: list[tuple[Any, int, torch.Tensor, torch.Tensor]] = []
        self._unit_of: dict[int, tuple[int, int]] = {}
        largest: dict[Any, int] = {}  # reduction group -> bytes of its largest unit (first-seen order)
        for u, unit in enumerate(units):
            for slot, p in zip(unit.slots, unit.params):
                self._unit_of[id(p)] = (u, slot.offset)
            if self.reduce_scatter and unit.world_size > 1:
                nbytes = unit.padded_numel * max(self.reduce_dtype.itemsize, unit.flat.element_size())
                key = self._group_of(unit)
                largest[key] = max(largest.get(key, 0), nbytes)
        for key, nbytes in largest.items():  # set up once per group now (collective), not inside a step
            shm_collectives.setup(key, units[0].flat.device, nbytes)

    def _group_of(self, unit: FlatUnit) -> Any:
        """The group ``unit`` reduces over (Note [group reductions])."""
        return self.group if unit.reduction is None else unit.reduction.group

    # --- stage 2: reduce during backward ------------------------------------------------------------
    def on_grad(self, p: torch.Tensor) -> None:
        """``p.grad`` is final for this backward: move it into its bucket; reduce a completed unit."""
        if p.grad is None:
            return
        u, offset = self._unit_of[id(p)]
        unit = self.units[u]
        bucket = self._bucket(u)
        bucket[offset : offset + p.numel()].add_(p.grad.reshape(-1))
        p.grad = None  # stage 2 keeps a full gradient only until it is in a bucket
        unit.ready += 1
        if unit.ready == len(unit.params):
            self._reduce(u)

    def _bucket(self, u: int) -> torch.Tensor:
        bucket = self._buckets.get(u)
        if bucket is None:
            unit = self.units[u]
            bucket = torch.zeros(unit.padded_numel, dtype=self.reduce_dtype, device=unit.flat.device)
            self._buckets[u] = bucket
        return bucket

    def _reduce(self, u: int) -> None:
        bucket = self._buckets.pop(u)
        self.units[u].ready = 0
        pre = self._factors[u][0]
        if pre != 1.0:
            bucket.div_(pre)
        if self.units[u].world_size == 1:  # the bucket is already the whole sum: no collective to wait on
            self._accumulate(u, bucket)
            return
        unit = self.units[u]
        group = self._group_of(unit)
        host = shm_collectives.get(group, bucket.device) if self.reduce_scatter else None
        if host is not None:  # Note [shared-memory collectives]: synchronous, and no socket copies to overlap
            out = host.reduce_scatter(torch.empty(unit.shard_numel, dtype=bucket.dtype), bucket)
            self._accumulate(u, out)
            return
        if self.reduce_scatter:
            out = torch.empty(unit.shard_numel, dtype=bucket.dtype, device=bucket.device)
            work = ds_comm.reduce_scatter_tensor(out, bucket, group=group, async_op=self.overlap_comm)
        else:  # reduce_scatter=false: the whole sum on every rank, of which this rank keeps its chunk
            work = ds_comm.all_reduce(bucket, group=group, async_op=self.overlap_comm)
            out = bucket.narrow(0, unit.rank * unit.shard_numel, unit.shard_numel)
        if self.overlap_comm:
            self._pending.append((work, u, out, bucket))
        else:
            self._accumulate(u, out)

    def _accumulate(self, u: int, reduced: torch.Tensor) -> None:
        post = self._factors[u][1]
        if post != 1.0:
            reduced.div_(post)
        shard = self.grad_shards[u]
        if shard is None:
            self.grad_shards[u] = reduced.to(self.grad_dtype) if reduced.dtype != self.grad_dtype else reduced
        else:
            shard.add_(reduced)

    def flush(self) -> None:
        """End of a backward: reduce units whose gradients did not all arrive (parameters unused in
        this forward count as zero), and wait for in-flight reductions."""
        for u in sorted(self._buckets):
            self._reduce(u)
        self.wait()

    def wait(self) -> None:
        for work, u, out, _bucket in self._pending:
            work.wait()
            self._accumulate(u, out)
        self._pending.clear()

    # --- stage 1: reduce full gradients at the step -----------------------------------------------------
    def hold(self, p: torch.Tensor) -> None:
        """Stage 1 with ``full_grad_dtype``: add this backward's ``p.grad`` into its unit's full gradient
        in that dtype and free it, so micro-batches accumulate in ``full_grad_dtype``, not the model's."""
        if p.grad is None:
            return
        held = self.held_view(p)
        assert held is not None  # hold() runs only where full_grad_dtype is set
        held.add_(p.grad)
        p.grad = None

    def held_view(self, p: torch.Tensor) -> torch.Tensor | None:
        """``p``'s slice of what :meth:`hold` accumulated (made zero if nothing yet), shaped like ``p``;
        None where this reducer holds nothing (gradients accumulate in ``p.grad``)."""
        if self.full_grad_dtype is None:
            return None
        u, offset = self._unit_of[id(p)]
        held = self._held.get(u)
        if held is None:
            unit = self.units[u]
            held = torch.zeros(unit.padded_numel, dtype=self.full_grad_dtype, device=unit.flat.device)
            self._held[u] = held
        return held[offset : offset + p.numel()].view(p.shape)

    def reduce_full_grads(self) -> None:
        """Reduce-scatter every unit's accumulated gradient (``p.grad``, or what :meth:`hold` kept) and
        free the full gradients."""
        for u, unit in enumerate(self.units):
            held = self._held.pop(u, None)
            if held is not None:  # its bucket: the held sum, in the reduce dtype
                self._buckets[u] = held if held.dtype == self.reduce_dtype else held.to(self.reduce_dtype)
            bucket = self._bucket(u)
            present = [(slot, p, p.grad) for slot, p in zip(unit.slots, unit.params) if p.grad is not None]
            if present:  # one multi-tensor copy (one launch on an accelerator, not one per parameter)
                put = torch._foreach_copy_ if held is None else torch._foreach_add_
                put(
                    [bucket.narrow(0, slot.offset, slot.numel) for slot, _, _ in present],
                    [grad.reshape(-1) for _, _, grad in present],
                )
            for _, p, _ in present:
                p.grad = None
            self._reduce(u)
        self.wait()

    def zero(self) -> None:
        """Drop the gradient shards and any partial bucket (after a step, or on ``zero_grad``)."""
        self.wait()
        self._buckets.clear()
        self._held.clear()
        self.grad_shards = [None] * len(self.units)
        for unit in self.units:
            unit.ready = 0
            for p in unit.params:
                p.grad = None
