"""ZeRO stage 3 without a trainer: a model sharded for forward only (DeepSpeed's ``DeepSpeedZeRoOffload``).

``deepspeed.initialize(model=model, config=<stage 3>)`` with no optimizer (TRL's reference model,
evaluation-only engines) must still hold ~1/N of the parameters per rank and gather them for each
forward, exactly as the training composition does; and a model built under ``zero.Init`` arrives with
empty parameters that only the stage-3 hooks can fill. So this composition reuses the training
pieces — :func:`ds_zero.stage3.sharding.shard_model` (FSDP2 units, ``zero.Init`` shards gathered
unit by unit) and :class:`ds_zero.stage3.hooks.UnitHooks` (rank agreement, forward prefetch) — and
leaves out the master weights, the reduction and the optimizer.

Note: [inference shards] With no optimizer there are no fp32 masters, so the shards are kept in the
model's dtype (bf16/fp16 shards under bf16/fp16: half the bytes of the training layout) and FSDP2
gathers them in that dtype. The root unit, which FSDP2 keeps gathered after forward for the backward
that training runs next, is resharded at the end of every forward here: an inference engine has no
backward to do it, and the gathered root would otherwise stay resident for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ds_zero.policy import ZeroPolicy
from ds_zero.stage3.gathered import full_state_dict
from ds_zero.stage3.hooks import UnitHooks
from ds_zero.stage3.policy import stage3_of
from ds_zero.stage3.sharding import ShardedModel, cast_whole_tensors, shard_model


@dataclass
class InferenceSharding:
    """A module sharded for forward only: its units, their hooks, and the state-dict reader."""

    sharded: ShardedModel
    hooks: UnitHooks
    param_dtype: torch.dtype
    _reshard_handle: Any = None

    @property
    def module(self) -> nn.Module:
        """The sharded module (the same object that was passed in)."""
        return self.sharded.module

    def full_state_dict(
        self,
        *,
        dtype: torch.dtype | None = None,
        exclude_frozen_parameters: bool = False,
        rank0_only: bool = True,
    ) -> dict[str, torch.Tensor] | None:
        """The full state dict on rank 0's CPU (None elsewhere), in ``dtype`` or the model's dtype;
        every rank must call it."""
        return full_state_dict(
            self.module,
            dtype=dtype or self.param_dtype,
            exclude_frozen_parameters=exclude_frozen_parameters,
            rank0_only=rank0_only,
        )

    def empty_partition_cache(self) -> None:
        """Drop every gathered copy of the units; the next forward gathers again."""
        self.sharded.reshard()

    def close(self) -> None:
        """Remove the hooks (the parameters stay sharded)."""
        self.hooks.close()
        if self._reshard_handle is not None:
            self._reshard_handle.remove()
            self._reshard_handle = None


def shard_for_inference(module: nn.Module, *, policy: ZeroPolicy, group: Any = None) -> InferenceSharding:
    """Shard ``module`` as ZeRO stage 3 does, for forward passes only (see the module docstring).

    ``policy`` is a stage-3 policy (its ``stage3_*`` values pick the units, the persistent parameters
    and the prefetch); ``group`` is the data-parallel group (None: the world). Every rank must call it,
    with the module already on its device. Afterwards ``module(...)`` gathers each unit as it runs and
    ``GatheredParameters`` / :meth:`InferenceSharding.full_state_dict` give full values.
    """
    s3 = stage3_of(policy)
    dtype = policy.mixed_precision.param_dtype
    sharded = shard_model(
        module,
        policy=policy,
        group=group,
        shard_dtype=dtype,  # Note [inference shards]
        secondary=False,
    )
    cast_whole_tensors(module, dtype)
    hooks = UnitHooks(
        sharded, group=group, prefetch_numel=s3.prefetch_bucket_numel, check=s3.detect_divergence
    )
    units = list(sharded.units)

    def reshard_all(_module: nn.Module, _args: Any, _output: Any) -> None:
        for unit in units:
            unit.reshard()

    # after FSDP2's own post-forward hook (registered by fully_shard, so earlier) and the agreement hook
    handle = module.register_forward_hook(reshard_all)
    return InferenceSharding(sharded=sharded, hooks=hooks, param_dtype=dtype, _reshard_handle=handle)
