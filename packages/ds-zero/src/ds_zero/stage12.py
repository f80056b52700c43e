"""ZeRO stages 1 and 2 as compositions of :class:`~ds_zero.trainer.ZeroTrainer`'s parts.

* :class:`ShardedParams` (the master-weight holder): parameters become views of flat units
  (:mod:`ds_zero.units`); the optimizer steps this rank's fp32 *master shard* of each unit, and
  ``publish`` all-gathers the updated shards back into the units.
* :class:`ShardedReduction` (the gradient reducer): reduce-scatters gradients into shards
  (:mod:`ds_zero.grad_reducer`) — stage 2 while backward runs, stage 1 at the step.
* :class:`ShardedTrainer`: the trainer whose ``state_dict`` is this rank's slices
  (:mod:`ds_zero.sharded_state`), so checkpoints reshard.

Note [memory]: in full precision a master shard is a view of the parameter buffer (no copy): a rank
holds 4Ψ (params) + 8Ψ/N (Adam) + gradients (4Ψ in stage 1, 4Ψ/N in stage 2). In mixed precision
parameters and gradients are 2 bytes each and the fp32 masters add 4Ψ/N.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

import ds_comm
from ds_zero import shm_collectives
from ds_zero.dtypes import grad_dtypes
from ds_zero.entry import register_stage
from ds_zero.grad_reducer import GradReducer
from ds_zero.group_reduction import GroupReduction
from ds_zero.loss_scaler import make_loss_scaler
from ds_zero.masters import trainable_in_backward_order
from ds_zero.policy import DEFAULT_BUCKET_NUMEL, ZeroPolicy
from ds_zero.sharded_state import load_shard_state_dict, shard_state_dict
from ds_zero.trainer import ZeroTrainer
from ds_zero.units import FlatUnit, build_units, cast_units

logger = logging.getLogger("ds_zero")


def _unit_numel(policy: ZeroPolicy, trainable: list[list[torch.Tensor]], group: Any) -> int:
    """Elements per flat unit: the config's ``reduce_bucket_size``, else by transport (Note [adaptive
    buckets] in ds_zero.policy). Collective where the config leaves it open: the shared-memory
    collectives are set up here, sized to the model, to learn whether they serve ``group``."""
    params = [p for params in trainable for p in params]
    if policy.reduce.bucket_numel is not None:
        return policy.reduce.bucket_numel
    if not params or ds_comm.get_world_size(group) == 1:
        return DEFAULT_BUCKET_NUMEL  # nothing to reduce, so nothing to overlap
    on_host = False
    if policy.reduce.reduce_scatter:  # without it, c10d all-reduces each unit
        nbytes = sum(p.numel() * p.element_size() for p in params)
        on_host = shm_collectives.setup(group, params[0].device, nbytes) is not None
    return policy.reduce.bucket_numel_for(
        on_host=on_host, itemsize=policy.mixed_precision.param_dtype.itemsize
    )


class ShardedParams:
    """Master weights for stages 1 and 2: one fp32 master shard per flat unit."""

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        policy: ZeroPolicy,
        group: Any,
        reductions: Mapping[int, GroupReduction] | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.group = group
        self.overlap = policy.reduce.overlap
        self.model_params = trainable_in_backward_order(module, optimizer)
        world, rank = ds_comm.get_world_size(group), ds_comm.get_rank(group)
        trainable = [[p for p in g["params"] if p.requires_grad] for g in optimizer.param_groups]
        # Units are built before any cast, so the fp32 masters start from the exact fp32 weights.
        self.units: list[FlatUnit] = build_units(
            trainable,
            bucket_numel=_unit_numel(policy, trainable, group),
            world_size=world,
            rank=rank,
            reductions=reductions,
        )
        offload = policy.offload.optimizer_device != "none"
        param_dtype, master_dtype = policy.mixed_precision.param_dtype, policy.mixed_precision.master_dtype
        # Alias the parameter buffer when the masters share its dtype and device; else keep a copy.
        alias = param_dtype == master_dtype and not offload
        if master_dtype != torch.float32:
            cast_units(
                self.units, param_dtype
            )  # Note [low-precision masters]: they start from the cast weights
        self.holders = [
            self._make_master(u, alias, offload, policy.offload.pin_memory, master_dtype) for u in self.units
        ]
        for g, group_dict in enumerate(optimizer.param_groups):
            group_dict["params"] = [m for m, u in zip(self.holders, self.units) if u.group_index == g]
        cast_units(self.units, param_dtype)
        module.to(param_dtype)  # buffers and frozen parameters follow the model's dtype
        self.names = _param_names(module, self.units)

    def _make_master(
        self, unit: FlatUnit, alias: bool, offload: bool, pin_memory: bool, dtype: torch.dtype
    ) -> nn.Parameter:
        shard = unit.shard_view()
        if alias and shard.dtype == dtype:
            return nn.Parameter(shard)  # aliases the parameter buffer: Note [memory]
        master = shard.detach().to(device="cpu" if offload else shard.device, dtype=dtype, copy=True)
        if offload and pin_memory and torch.cuda.is_available():
            master = master.pin_memory()
        return nn.Parameter(master)

    def holder(self, param: Tensor) -> Tensor:
        """The reducer tracks model parameters themselves (it knows their units)."""
        return param

    def accumulate(self, param: Tensor) -> None:
        """Nothing to do: stage 1 accumulates in ``p.grad``, stage 2's reducer takes the gradient."""

    def grads(self) -> list[Tensor]:
        """Give each master its reduced gradient shard (fp32, on the master's device) and return them."""
        out = []
        for master, shard in zip(self.holders, self.reduction.grad_shards):
            grad = (
                torch.zeros_like(master)
                if shard is None
                else shard.to(device=master.device, dtype=master.dtype)
            )
            master.grad = grad
            out.append(grad)
        return out

    def publish(self) -> None:
        """Refresh the low-precision shards from the masters and all-gather every unit."""
        works = []
        for unit, master in zip(self.units, self.holders):
            shard = unit.shard_view()
            if master.data_ptr() != shard.data_ptr():
                shard.copy_(master.detach())
            if unit.world_size == 1:  # the shard is the whole flat buffer
                continue
            group = self.group if unit.reduction is None else unit.reduction.group  # Note [group reductions]
            host = shm_collectives.get(group, unit.flat.device)  # Note [shared-memory collectives]
            if host is not None:
                host.all_gather(unit.flat, shard)
                continue
            works.append(ds_comm.all_gather_into_tensor(unit.flat, shard, group=group, async_op=self.overlap))
        for work in works:
            if work is not None:
                work.wait()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.reduction.zero()
        for master in self.holders:
            master.grad = None

    def refresh_from_model(self) -> None:
        """Re-take the masters from the model's weights (after a weights-only load)."""
        with torch.no_grad():
            for unit, master in zip(self.units, self.holders):
                master.copy_(unit.shard_view())

    @property
    def reduction(self) -> GradReducer:
        return self._reducer

    def attach(self, reducer: GradReducer) -> None:
        self._reducer = reducer


class ShardedReduction:
    """The trainer's reducer for stages 1 and 2 (see the module doc)."""

    def __init__(self, reducer: GradReducer, stage: int) -> None:
        self.reducer = reducer
        self.stage = stage
        self.sync = True  # stage 2 must reduce every backward regardless: it keeps no full gradients
        self._flush_queued = False

    @property
    def grad_shards(self) -> list[Tensor | None]:
        return self.reducer.grad_shards

    def mark_ready(self, param: Tensor) -> None:
        if self.stage != 2:
            if self.reducer.full_grad_dtype is not None:  # stage 1, accumulating in another dtype
                self.reducer.hold(param)
            return
        if not self._flush_queued:
            # Note [end of backward]: units whose parameters got no gradient in this backward must
            # still be reduced before the next one starts; autograd runs this once backward ends.
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
            self._flush_queued = True
        self.reducer.on_grad(param)

    def _end_of_backward(self) -> None:
        self._flush_queued = False
        self.reducer.flush()

    def finish(self) -> None:
        """Before the step: stage 1 reduces the accumulated full gradients; stage 2 has reduced already."""
        if self.stage == 1:
            self.reducer.reduce_full_grads()
        else:
            self.reducer.flush()

    def zero(self) -> None:
        self.reducer.zero()


class ShardedTrainer(ZeroTrainer):
    """The trainer for stages 1 and 2: its state is this rank's per-parameter slices."""

    sharded_state = True  # the engine writes one optimizer-state file per rank
    masters: ShardedParams  # compose_sharded's holder: the units and parameter names are read here

    def accumulated_grad(self, param: Tensor) -> Tensor:
        """Stage 1 accumulating in another dtype keeps the sum in the reducer (GradReducer.hold): a view
        of it; otherwise ``p.grad``, as at every stage."""
        held = self.masters.reduction.held_view(param)
        return held if held is not None else super().accumulated_grad(param)

    def state_dict(self) -> dict[str, Any]:
        swapper = self.swapper  # NVMe: one sub-group at a time (Note [bounded checkpoint I/O])
        with (
            self._values_one_at_a_time(dirty=False) as bring,
            swapper.reading() if swapper else nullcontext() as read,
        ):
            state = shard_state_dict(
                self._shards(),
                self.masters.names,
                self._side_state(),
                state_of=read,
                copy=self._spill(),
                bring=bring,
            )
        state["loss_scaler"] = self.loss_scaler.state_dict()
        state["dynamic_loss_scale"] = self.loss_scaler.dynamic
        state["overflow"] = self.overflow
        return state

    def load_state_dict(self, state_dict: Any, load_optimizer_states: bool = True) -> None:
        """Load slices saved at any world size and stage: one rank's dict or a list of every rank's."""
        shards = state_dict if isinstance(state_dict, list) else [state_dict]
        swapper = self.swapper
        if swapper is not None:  # states loaded before (weights-only loads keep them) go back out first
            swapper.swap_out_all()
        with self._values_one_at_a_time(dirty=True) as bring:
            side = load_shard_state_dict(
                self._shards(),
                shards,
                self.masters.names,
                load_optimizer_states=load_optimizer_states,
                put_state=None if swapper is None else swapper.store,
                fresh_state=None if swapper is None else swapper.fresh_state,
                bring=bring,
            )
        if shards[0].get("loss_scaler") is not None:
            self.loss_scaler.load_state_dict(shards[0]["loss_scaler"])
        self._load_side_state(side)

    def _values_one_at_a_time(self, *, dirty: bool) -> Any:
        """Checkpoint save and load: a context giving ``bring(master)``, which puts that master's values in
        memory (stage 3's NVMe parameters), or None when every value always is (here)."""
        return nullcontext(None)

    def _spill(self) -> Callable[[Tensor], Tensor] | None:
        """How a save copies each slice: into file-backed mappings when states live on NVMe (Note
        [bounded checkpoint I/O]); None: a plain clone."""
        return None if self.swapper is None else self.swapper.spill_copy

    def _side_state(self) -> list[dict[str, Tensor]] | None:
        """Tensors shaped like the master shards that checkpoints carry beside the optimizer's state
        (Note [side state] in :mod:`ds_zero.sharded_state`); None: none."""
        return None

    def _load_side_state(self, side: list[dict[str, Tensor]]) -> None:
        """Take the loaded side state; a trainer without any drops it, saying so."""
        if any(side):
            keys = sorted({k for d in side for k in d})
            logger.warning("the checkpoint holds trainer state %s that this run does not use: dropped", keys)

    def _shards(self) -> Any:
        return _ShardView(self)


class _ShardView:
    """The fields :mod:`ds_zero.sharded_state` reads, taken from a trainer."""

    def __init__(self, trainer: ShardedTrainer) -> None:
        self.units = trainer.masters.units
        self.masters = trainer.masters.holders
        self.optimizer = trainer.optimizer
        self.stage = trainer.policy.stage
        self.publish = trainer.masters.publish


def _param_names(module: nn.Module, units: list[FlatUnit]) -> dict[int, str]:
    """Unit slot index -> the parameter's name in ``module`` (what checkpoints are keyed by)."""
    name_of = {id(p): name for name, p in module.named_parameters()}
    return {
        slot.index: name_of.get(id(p), str(slot.index))
        for unit in units
        for slot, p in zip(unit.slots, unit.params)
    }


def compose_sharded(
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    policy: ZeroPolicy,
    group: Any = None,
    reductions: Mapping[int, GroupReduction] | None = None,
) -> ShardedTrainer:
    """Stage 1 (sharded optimizer state) or 2 (and sharded gradients), per ``policy.stage``."""
    params = ShardedParams(module, optimizer, policy, group, reductions)
    mp = policy.mixed_precision
    dtypes = grad_dtypes(mp, policy.stage)  # Note [gradient dtypes]
    reducer = GradReducer(
        params.units,
        grad_dtype=dtypes.accum,
        group=group,
        policy=policy.reduce,
        reduce_dtype=dtypes.reduce,
        full_grad_dtype=dtypes.accum if policy.stage == 1 and dtypes.accum != mp.param_dtype else None,
    )
    params.attach(reducer)
    reduction = ShardedReduction(reducer, policy.stage)
    scaler = make_loss_scaler(policy.loss_scale, rank=ds_comm.get_rank())
    trainer_class: Any = ShardedTrainer
    extra: dict[str, Any] = {}
    if policy.zenflow is not None:  # Note [zenflow] in ds_zero.zenflow
        from ds_zero.zenflow.trainer import ZenFlowTrainer

        trainer_class, extra = ZenFlowTrainer, {"zenflow": policy.zenflow}
    return trainer_class(
        **extra,
        module=module,
        optimizer=optimizer,
        policy=policy,
        masters=params,
        reducer=reduction,
        scaler=scaler,
        shard_group=group,
        sharded_grads=True,
        swapper=nvme_swapper(optimizer, policy),
    )


def nvme_swapper(optimizer: torch.optim.Optimizer, policy: ZeroPolicy) -> Any:
    """The optimizer-state swapper ``offload_optimizer.device: nvme`` asks for (stages 1-3), else None."""
    if policy.offload.optimizer_device != "nvme":
        return None
    from ds_zero.nvme_swapper import OptimizerStateSwapper
    from ds_zero.policy import NvmePolicy

    return OptimizerStateSwapper(
        optimizer,
        policy=policy.offload.nvme or NvmePolicy(),
        rank=ds_comm.get_rank(),
        pin=policy.offload.pin_memory and torch.cuda.is_available(),
    )


register_stage(1, compose_sharded)
register_stage(2, compose_sharded)
