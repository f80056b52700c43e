"""ZeRO stages 1 and 2: an optimizer whose states (and, in stage 2, gradients) are sharded.

The wrapped optimizer keeps its class, hyperparameters and param groups, but each group's parameters
are replaced by this rank's fp32 *master shards*, one per flat unit (:mod:`ds_zero.units`). A step:

1. gradient shards arrive from :class:`~ds_zero.grad_reducer.GradReducer` (reduce-scattered);
2. overflow is checked on the shards and agreed across ranks (fp16 only), gradients are unscaled;
3. the global gradient norm is computed from the shards (one all-reduce of a scalar) and clipped;
4. the inner optimizer steps the shards;
5. low-precision copies are refreshed and each unit is all-gathered back into the model's parameters.

Note [memory]: in full precision, the master shard is a view of the parameter buffer (no copy), so a
rank holds 4Ψ (params) + 8Ψ/N (Adam states) + gradients (4Ψ in stage 1, 4Ψ/N in stage 2). In mixed
precision the parameters and gradients are 2 bytes each and the fp32 master adds 4Ψ/N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ds_comm
import torch

from ds_zero.grad_reducer import GradReducer
from ds_zero.units import FlatUnit, build_units


@dataclass(frozen=True)
class StepResult:
    """What a step did: whether it was skipped for an overflow, and the pre-clipping global norm."""

    overflow: bool
    grad_norm: float


class ZeroShardedOptimizer:
    """Shards ``optimizer``'s state over the data-parallel group (stage 1), and gradients (stage 2)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        stage: int,
        group: Any = None,
        bucket_numel: int = 500_000_000,
        overlap_comm: bool = False,
        offload_device: str | None = None,
        pin_memory: bool = False,
        reduce_dtype: torch.dtype | None = None,
        predivide: float | None = None,
    ) -> None:
        if stage not in (1, 2):
            raise ValueError(f"ZeroShardedOptimizer implements stages 1 and 2, not {stage}")
        self.stage = stage
        self.optimizer = optimizer
        self.group = group
        self.overlap_comm = overlap_comm
        self.offload_device = offload_device
        world, rank = ds_comm.get_world_size(group), ds_comm.get_rank(group)
        trainable = [[p for p in g["params"] if p.requires_grad] for g in optimizer.param_groups]
        self.units: list[FlatUnit] = build_units(trainable, bucket_numel=bucket_numel, world_size=world, rank=rank)
        self.model_dtype = self.units[0].flat.dtype if self.units else torch.float32
        self.masters = [self._make_master(unit, pin_memory) for unit in self.units]
        for g, group_dict in enumerate(optimizer.param_groups):
            group_dict["params"] = [m for m, unit in zip(self.masters, self.units) if unit.group_index == g]
        self.reducer = GradReducer(self.units, grad_dtype=self.model_dtype, group=group, overlap_comm=overlap_comm,
                                   reduce_dtype=reduce_dtype, predivide=predivide)
        if stage == 2:
            self.reducer.attach_hooks(lambda: True)

    def _make_master(self, unit: FlatUnit, pin_memory: bool) -> torch.nn.Parameter:
        shard = unit.shard_view()
        if shard.dtype == torch.float32 and self.offload_device is None:
            return torch.nn.Parameter(shard)  # aliases the parameter buffer: Note [memory]
        master = shard.detach().to(device=self.offload_device or shard.device, dtype=torch.float32, copy=True)
        if pin_memory and torch.cuda.is_available():
            master = master.pin_memory()
        return torch.nn.Parameter(master)

    # --- backward -----------------------------------------------------------------------------------
    def after_backward(self, *, boundary: bool) -> None:
        """Finish a micro-step's gradients: stage 2 reduces every micro-step, stage 1 at the boundary."""
        if self.stage == 2:
            self.reducer.flush()
        elif boundary:
            self.reducer.reduce_full_grads()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.reducer.zero()
        for master in self.masters:
            master.grad = None

    # --- step ---------------------------------------------------------------------------------------
    def _install_grads(self) -> list[torch.Tensor]:
        grads = []
        for master, shard in zip(self.masters, self.reducer.grad_shards):
            if shard is None:
                grad = torch.zeros_like(master)
            else:
                grad = shard.to(device=master.device, dtype=master.dtype)
            master.grad = grad
            grads.append(grad)
        return grads

    def _any_overflow(self, grads: list[torch.Tensor]) -> bool:
        local = torch.zeros(1)
        for g in grads:
            if not torch.isfinite(g).all():
                local.fill_(1.0)
                break
        ds_comm.all_reduce(local, op=ds_comm.ReduceOp.MAX, group=self.group)
        return bool(local.item())

    def global_grad_norm(self, grads: list[torch.Tensor]) -> float:
        """L2 norm of the full gradient, from the shards: padding is zero and adds nothing."""
        local = torch.zeros(1, dtype=torch.float64)
        for g in grads:
            local += g.double().pow(2).sum().cpu()
        ds_comm.all_reduce(local, group=self.group)
        return math.sqrt(local.item())

    def step(self, *, inv_scale: float = 1.0, clip: float = 0.0, check_overflow: bool = False) -> StepResult:
        """Update the shards and rebuild the parameters; skip the update on an agreed overflow."""
        grads = self._install_grads()
        if check_overflow and self._any_overflow(grads):
            self.zero_grad()
            return StepResult(overflow=True, grad_norm=float("inf"))
        if inv_scale != 1.0:
            for g in grads:
                g.mul_(inv_scale)
        norm = self.global_grad_norm(grads)
        if clip > 0.0:
            coef = clip / (norm + 1e-6)
            if coef < 1.0:
                for g in grads:
                    g.mul_(coef)
        self.optimizer.step()
        self._publish_params()
        self.zero_grad()
        return StepResult(overflow=False, grad_norm=norm)

    def _publish_params(self) -> None:
        works = []
        for unit, master in zip(self.units, self.masters):
            shard = unit.shard_view()
            if master.data_ptr() != shard.data_ptr():
                shard.copy_(master.detach())
            works.append(ds_comm.all_gather_into_tensor(unit.flat, shard, group=self.group, async_op=self.overlap_comm))
        for work in works:
            if work is not None:
                work.wait()

    # --- torch.optim.Optimizer-like surface ----------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    def close(self) -> None:
        """Remove the gradient hooks (the model's parameters stay views of the flat buffers)."""
        self.reducer.detach_hooks()
