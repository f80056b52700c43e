"""Gradient reduction for ZeRO stages 1 and 2: reduce-scatter each unit's gradients into shards.

Stage 2 reduces while backward runs: a ``register_post_accumulate_grad_hook`` on every parameter
copies its gradient into the unit's bucket and frees ``p.grad``; when a unit's last gradient arrives,
its bucket is reduce-scattered (asynchronously with ``overlap_comm``) so each rank keeps only its
shard. Stage 1 keeps full gradients in ``p.grad`` through accumulation and reduces them at the
boundary. Both add into ``grad_shards[unit]``, so accumulation works the same way for both.

Note [averaging]: gradients are pre-divided by the world size before the sum-reduction (gloo has no
AVG); ``predivide`` lets the engine apply DeepSpeed's ``gradient_predivide_factor`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ds_comm
import torch

from ds_zero.units import FlatUnit


class GradReducer:
    """Owns the gradient buckets and shards of a list of units."""

    def __init__(self, units: list[FlatUnit], *, grad_dtype: torch.dtype, group: Any, overlap_comm: bool,
                 reduce_dtype: torch.dtype | None = None, predivide: float | None = None) -> None:
        self.units = units
        self.group = group
        self.overlap_comm = overlap_comm
        self.grad_dtype = grad_dtype
        self.reduce_dtype = reduce_dtype or grad_dtype
        self.world_size = units[0].world_size if units else 1
        self.predivide = predivide if predivide is not None else float(self.world_size)
        self.grad_shards: list[torch.Tensor | None] = [None] * len(units)
        self._buckets: dict[int, torch.Tensor] = {}
        # in-flight reductions: (work, unit, output shard, bucket kept alive until the work completes)
        self._pending: list[tuple[Any, int, torch.Tensor, torch.Tensor]] = []
        self._unit_of: dict[torch.nn.Parameter, tuple[int, int]] = {}
        for u, unit in enumerate(units):
            for slot, p in zip(unit.slots, unit.params):
                self._unit_of[p] = (u, slot.offset)
        self._handles: list[Any] = []

    # --- stage 2: reduce during backward ------------------------------------------------------------
    def attach_hooks(self, should_reduce: Callable[[], bool]) -> None:
        """Reduce gradients as they become ready (stage 2). ``should_reduce`` is checked per gradient."""
        for p in self._unit_of:
            self._handles.append(p.register_post_accumulate_grad_hook(lambda p, f=should_reduce: f() and self._on_grad(p)))

    def detach_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_grad(self, p: torch.nn.Parameter) -> None:
        u, offset = self._unit_of[p]
        unit = self.units[u]
        bucket = self._bucket(u)
        bucket[offset:offset + p.numel()].copy_(p.grad.reshape(-1))
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
        if self.predivide != 1.0:
            bucket.div_(self.predivide)
        out = torch.empty(self.units[u].shard_numel, dtype=bucket.dtype, device=bucket.device)
        work = ds_comm.reduce_scatter_tensor(out, bucket, group=self.group, async_op=self.overlap_comm)
        if self.overlap_comm:
            self._pending.append((work, u, out, bucket))
        else:
            self._accumulate(u, out)

    def _accumulate(self, u: int, reduced: torch.Tensor) -> None:
        shard = self.grad_shards[u]
        if shard is None:
            self.grad_shards[u] = reduced.to(self.grad_dtype) if reduced.dtype != self.grad_dtype else reduced
        else:
            shard.add_(reduced)

    def flush(self) -> None:
        """End of a backward: reduce units whose gradients did not all arrive (unused parameters
        count as zero), and wait for in-flight reductions."""
        for u in sorted(self._buckets):
            self._reduce(u)
        self.wait()

    def wait(self) -> None:
        for work, u, out, _bucket in self._pending:
            work.wait()
            self._accumulate(u, out)
        self._pending.clear()

    # --- stage 1: reduce full gradients at the boundary ----------------------------------------------
    def reduce_full_grads(self) -> None:
        """Reduce-scatter every unit's accumulated ``p.grad`` and free the full gradients."""
        for u, unit in enumerate(self.units):
            bucket = self._bucket(u)
            for slot, p in zip(unit.slots, unit.params):
                if p.grad is not None:
                    bucket[slot.offset:slot.offset + slot.numel].copy_(p.grad.reshape(-1))
                    p.grad = None
            self._reduce(u)
        self.wait()

    def zero(self) -> None:
        """Drop the gradient shards (after a step, or on ``zero_grad``)."""
        self.grad_shards = [None] * len(self.units)
        for unit in self.units:
            unit.ready = 0
            for p in unit.params:
                p.grad = None
