"""The one public entry: ``wrap(module, optimizer, policy=..., group=...)`` -> a trainer.

Note: [stages are compositions] A stage is a function that picks parts — a master-weight holder, a
gradient reducer, the norm group — and hands them to :class:`ds_zero.trainer.ZeroTrainer`. Stage 0
(replicated data parallel) is :func:`compose_stage0`; other stages register their own composition in
:data:`STAGES` (``register_stage``) rather than adding flags to a shared class.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

import ds_comm
from ds_zero.allreduce import BucketedAllReduce
from ds_zero.dtypes import grad_dtypes
from ds_zero.group_reduction import GroupReduction, RoutedReduce, replicated_norm, split_by_reduction
from ds_zero.loss_scaler import make_loss_scaler
from ds_zero.masters import Fp32Masters, ModelMasters
from ds_zero.param_access import link_parameters
from ds_zero.policy import ZeroPolicy
from ds_zero.trainer import ZeroTrainer


class StageNotAvailable(NotImplementedError):
    """The requested ZeRO stage (or a feature of it) is not built in this installation."""


Composer = Callable[..., ZeroTrainer]
STAGES: dict[int, Composer] = {}


def register_stage(stage: int, composer: Composer) -> None:
    """Make ``wrap`` build ``stage`` with ``composer(module=, optimizer=, policy=, group=)``."""
    STAGES[stage] = composer


def compose_stage0(
    *,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    policy: ZeroPolicy,
    group: Any = None,
    reductions: Mapping[int, GroupReduction] | None = None,
) -> ZeroTrainer:
    """Replicated data parallel: full masters on every rank, bucketed all-reduce of gradients."""
    if policy.offload.optimizer_device != "none" or policy.offload.param_device != "none":
        raise StageNotAvailable("offload needs ZeRO stage 1 or higher (zero_optimization.offload_*)")
    mp = policy.mixed_precision
    if mp.low_precision:
        if mp.accum_dtype not in (None, torch.float32):
            raise StageNotAvailable(
                "under fp16/bf16, gradients accumulate in fp32 (data_types.grad_accum_dtype)"
            )
        masters: ModelMasters = Fp32Masters(module, optimizer, mp.param_dtype)
    else:
        masters = ModelMasters(module, optimizer)
    scaler = make_loss_scaler(policy.loss_scale, rank=ds_comm.get_rank())
    if reductions:  # Note [group reductions] in ds_zero.group_reduction
        parts = split_by_reduction(masters.holders, optimizer, reductions)
        routed = RoutedReduce(
            [
                (
                    BucketedAllReduce(
                        hs,
                        policy=policy.reduce,
                        group=r.group if r else group,
                        reduce_dtype=grad_dtypes(mp, 0).reduce,
                        average_over=r.average_over if r else None,
                    ),
                    hs,
                )
                for r, hs in parts
            ]
        )
        return ZeroTrainer(
            module=module,
            optimizer=optimizer,
            policy=policy,
            masters=masters,
            reducer=routed,
            scaler=scaler,
            norm_fn=replicated_norm(parts),
        )
    reducer = BucketedAllReduce(
        masters.holders, policy=policy.reduce, group=group, reduce_dtype=grad_dtypes(mp, 0).reduce
    )
    return ZeroTrainer(
        module=module, optimizer=optimizer, policy=policy, masters=masters, reducer=reducer, scaler=scaler
    )


register_stage(0, compose_stage0)


def available_stages() -> list[int]:
    """The stages this installation can build."""
    return sorted(STAGES)


def wrap(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    policy: ZeroPolicy,
    group: Any = None,
    reductions: Mapping[int, GroupReduction] | None = None,
) -> ZeroTrainer:
    """Wrap ``module`` and ``optimizer`` into the trainer ``policy.stage`` composes.

    ``group`` is the data-parallel process group (None: the world). The module must already be on its
    device; under fp16/bf16 it is cast to ``policy.mixed_precision.param_dtype`` here. ``reductions``
    maps optimizer param-group indices to other reductions (expert parameters: Note [group reductions]).
    """
    composer = STAGES.get(policy.stage)
    if composer is None:
        raise StageNotAvailable(
            f"ZeRO stage {policy.stage} is not available in this installation (available: {available_stages()})"
        )
    extra = {"reductions": reductions} if reductions else {}
    try:
        trainer = composer(module=module, optimizer=optimizer, policy=policy, group=group, **extra)
    except TypeError as exc:
        if extra and "reductions" in str(exc):
            raise StageNotAvailable(
                f"ZeRO stage {policy.stage} cannot reduce param groups over other process "
                "groups (mixture-of-experts parameter groups)"
            ) from None
        raise
    link_parameters(trainer)  # deepspeed.utils.safe_get_full_* find the trainer from a parameter
    return trainer
