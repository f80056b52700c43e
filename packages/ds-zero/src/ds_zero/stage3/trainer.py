"""ZeRO stage 3 as a composition of :class:`~ds_zero.trainer.ZeroTrainer`'s parts.

``compose_stage3`` shards the model into units (:mod:`ds_zero.stage3.sharding`, FSDP2), builds the
master-weight holder over the shards (:mod:`ds_zero.stage3.params`), wires the unit hooks
(:mod:`ds_zero.stage3.hooks`) and hands them to :class:`Stage3Trainer`, whose checkpoint state is
the per-parameter slices every stage shares (:mod:`ds_zero.sharded_state`).

Note: [memory] Per rank, with Adam and Ψ parameters on N ranks: fp32 shards 4Ψ/N (they are also
the masters), gradients 4Ψ/N, Adam 8Ψ/N — 16Ψ/N in every precision — plus the units gathered at the
moment (in ``param_dtype``) and the persistent parameters, which stay whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

import ds_comm
from ds_zero.entry import StageNotAvailable
from ds_zero.loss_scaler import make_loss_scaler
from ds_zero.nvme_swapper import spill_copy
from ds_zero.policy import ParamNvmePolicy, ZeroPolicy
from ds_zero.stage3.gathered import full_state_dict
from ds_zero.stage3.hooks import BACKWARD, UnitHooks
from ds_zero.stage3.nvme_params import ParamSwapper
from ds_zero.stage3.offload_view import ParameterOffload
from ds_zero.stage3.params import Stage3Params
from ds_zero.stage3.policy import stage3_of
from ds_zero.stage3.sharding import ShardedModel, cast_whole_tensors, shard_model
from ds_zero.stage12 import ShardedReduction, ShardedTrainer, nvme_swapper


class Stage3Reduction:
    """The trainer's reducer: FSDP2 reduces unit gradients itself; persistent ones reduce at the step."""

    def __init__(self, persistent: ShardedReduction | None) -> None:
        self.persistent = persistent
        self.sync = True  # stage 3 reduces every backward: it keeps no full gradients

    def mark_ready(self, param: Tensor) -> None:
        if self.persistent is not None:
            self.persistent.mark_ready(param)

    def finish(self) -> None:
        if self.persistent is not None:
            self.persistent.finish()


class Stage3Trainer(ShardedTrainer):
    """The stage-3 trainer (``engine.optimizer``): sharded state, agreement checks at backward and step."""

    def __init__(
        self,
        *,
        sharded: ShardedModel,
        hooks: UnitHooks,
        param_swapper: ParamSwapper | None = None,
        **parts: Any,
    ) -> None:
        super().__init__(**parts)
        self.sharded = sharded
        self.hooks = hooks
        self.param_swapper = param_swapper  # offload_param nvme (Note [parameter swapping])
        # DeepSpeed's engine.optimizer.parameter_offload (Note [hooks off for generation])
        self.parameter_offload = ParameterOffload(
            sharded, hooks, param_dtype=self.policy.mixed_precision.param_dtype
        )

    def backward(self, loss: Tensor, retain_graph: bool = False) -> None:
        """Backward of the scaled loss; unit gradients are reduce-scattered as each unit's backward ends."""
        self.hooks.agree(BACKWARD)
        super().backward(loss, retain_graph=retain_graph)

    def step(self, closure: Any = None) -> bool:
        """Agree on the step (Note [divergence]), then the shared step sequence."""
        self.hooks.on_step()
        mp = self.policy.mixed_precision
        # Note [parameter swapping]: unit by unit (_optimizer_step), unless the fp32 step of low-precision
        # masters needs every parameter at once
        whole = self.param_swapper is not None and mp.master_dtype != mp.optimizer_state_dtype
        with self._params_resident() if whole else nullcontext():
            return super().step(closure)

    def _optimizer_step(self) -> None:
        swapper = self.param_swapper
        mp = self.policy.mixed_precision
        if swapper is None or mp.master_dtype != mp.optimizer_state_dtype:
            super()._optimizer_step()
        else:
            swapper.step(self.optimizer, super()._optimizer_step)

    @contextmanager
    def _values_one_at_a_time(self, *, dirty: bool) -> Iterator[Callable[[Tensor], None] | None]:
        """Checkpoint save and load: with offload_param nvme, ``bring(master)`` puts that master's unit in
        memory, one unit at a time (Note [bounded parameter checkpoints]); None without it."""
        if self.param_swapper is None:
            yield None
            return
        with self.param_swapper.one_at_a_time(dirty=dirty) as bring:
            yield bring

    def _spill(self) -> Callable[[Tensor], Tensor] | None:
        """With offload_param nvme, saved copies go to file-backed mappings under its swap folder."""
        if self.param_swapper is None:
            return super()._spill()
        folder = self.param_swapper.folder
        return lambda t: spill_copy(t, folder)

    def _params_resident(self) -> Any:
        """Every shard in memory inside (offload_param nvme brings them in and swaps them out after)."""
        return self.param_swapper.resident() if self.param_swapper is not None else nullcontext()

    @contextmanager
    def states_resident(self) -> Iterator[None]:
        """Optimizer states and (offload_param nvme) parameter shards in memory inside."""
        with ExitStack() as stack:
            stack.enter_context(super().states_resident())
            stack.enter_context(self._params_resident())
            yield

    def full_state_dict(
        self,
        *,
        dtype: torch.dtype | None = None,
        exclude_frozen_parameters: bool = False,
        rank0_only: bool = True,
    ) -> dict[str, Tensor] | None:
        """The model's full state dict on the CPU of rank 0 (None elsewhere); every rank must call it."""
        with self._values_one_at_a_time(dirty=False) as bring:  # read only
            return full_state_dict(
                self.module,
                dtype=dtype,
                exclude_frozen_parameters=exclude_frozen_parameters,
                rank0_only=rank0_only,
                bring=bring,
                copy=self._spill(),
            )

    def consolidated_16bit_state_dict(
        self, exclude_frozen_parameters: bool = False
    ) -> dict[str, Tensor] | None:
        """DeepSpeed's ``_zero3_consolidated_16bit_state_dict``: full weights in the training dtype on
        rank 0's CPU, None on other ranks. Every rank must call it."""
        return self.full_state_dict(
            dtype=self.policy.mixed_precision.param_dtype, exclude_frozen_parameters=exclude_frozen_parameters
        )

    def empty_partition_cache(self) -> None:
        """Drop every gathered copy of the units; the next forward gathers again."""
        self.sharded.reshard()

    def prepare_for_compile(self) -> None:
        """Keep dynamo out of the unit hooks (Note [compile in place] in ds_engine.compile)."""
        self.hooks.make_opaque_to_compiler()
        if self.param_swapper is not None:
            self.param_swapper.make_opaque_to_compiler()

    def close(self) -> None:
        super().close()
        self.hooks.close()
        if self.param_swapper is not None:
            self.param_swapper.close()


def compose_stage3(
    *, module: nn.Module, optimizer: torch.optim.Optimizer, policy: ZeroPolicy, group: Any = None
) -> Stage3Trainer:
    """ZeRO stage 3: parameters, gradients and optimizer state all sharded (see the module doc)."""
    mp = policy.mixed_precision
    if mp.low_precision and mp.accum_dtype not in (None, torch.float32):
        raise StageNotAvailable("under fp16/bf16, gradients accumulate in fp32 (data_types.grad_accum_dtype)")
    s3 = stage3_of(policy)
    # Note [shards are masters]: the shards are kept in the masters' dtype
    sharded = shard_model(module, policy=policy, group=group, shard_dtype=mp.master_dtype)
    params = Stage3Params(sharded, optimizer, policy, group)
    cast_whole_tensors(module, mp.param_dtype, keep={id(p) for p in params.persistent_params})
    hooks = UnitHooks(
        sharded, group=group, prefetch_numel=s3.prefetch_bucket_numel, check=s3.detect_divergence
    )
    param_swapper = None
    if policy.offload.param_device == "nvme":
        param_swapper = ParamSwapper(
            sharded.units,
            policy=policy.offload.param_nvme or ParamNvmePolicy(),
            rank=ds_comm.get_rank(),
        )
        for unit in sharded.units:  # GatheredParameters and load_state_dict bring a unit in first
            setattr(unit, "_ds_param_swapper", param_swapper)  # noqa: B010 - a plain attribute, not a submodule
    return Stage3Trainer(
        module=module,
        optimizer=optimizer,
        policy=policy,
        masters=params,
        reducer=Stage3Reduction(params.reduction()),
        scaler=make_loss_scaler(policy.loss_scale, rank=ds_comm.get_rank()),
        shard_group=group,
        sharded_grads=True,
        sharded=sharded,
        hooks=hooks,
        param_swapper=param_swapper,
        swapper=nvme_swapper(optimizer, policy),
    )


def consolidated_16bit_state_dict(
    trainer: Stage3Trainer, exclude_frozen_parameters: bool = False
) -> dict[str, Tensor] | None:
    """What ``engine._zero3_consolidated_16bit_state_dict()`` returns: full weights in the training dtype
    on rank 0's CPU, None on other ranks. Every rank must call it."""
    return trainer.consolidated_16bit_state_dict(exclude_frozen_parameters=exclude_frozen_parameters)
