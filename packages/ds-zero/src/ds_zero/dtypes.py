"""The dtypes gradients are reduced and accumulated in, resolved once for every stage.

Note: [gradient dtypes] DeepSpeed 0.19's defaults (``engine.communication_data_type``,
``engine.get_data_types``): gradients are averaged across ranks in ``communication_data_type`` when
it is set, else in the model's dtype (fp16 under fp16, bf16 under bf16, fp32 otherwise), at every
stage. Every stage here reduces in :func:`grad_dtypes`'s ``reduce``, so a bf16 run moves bf16
gradients at stage 0, 1, 2 and 3 alike (half the bytes of fp32), as DeepSpeed does; set
``communication_data_type: fp32`` for fp32 reductions.

Accumulation across micro-batches, ``accum``, is the dtype each stage keeps the gradient in between
backward passes: ``data_types.grad_accum_dtype`` where the config sets it, else each stage's default.
Stage 0 adds each micro-batch into the fp32 master gradients (fp32 under fp16/bf16); stage 1 lets
autograd accumulate ``p.grad`` in the model dtype, or, with another ``grad_accum_dtype``, adds each
micro-batch's gradient into a full-size buffer of that dtype per unit (DeepSpeed's bf16 optimizer
with fp32 accumulation at stage 1); stage 2 adds the reduced shards in ``accum`` (the model dtype by
default; DeepSpeed refuses another dtype at stage 2, here it is followed); stage 3 accumulates FSDP2's
sharded gradients in the shard (master) dtype. Stages 0 and 3 under fp16/bf16 accumulate in fp32 and
refuse a low-precision ``grad_accum_dtype``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ds_zero.policy import MixedPrecisionPolicy


@dataclass(frozen=True)
class GradDtypes:
    """``reduce``: the dtype gradients are summed across ranks in; ``accum``: the dtype they accumulate
    in across micro-batches (Note [gradient dtypes])."""

    reduce: torch.dtype
    accum: torch.dtype


def grad_dtypes(mp: MixedPrecisionPolicy, stage: int) -> GradDtypes:
    """The reduction and accumulation dtypes of ``stage`` under ``mp`` (Note [gradient dtypes])."""
    reduce = mp.reduce_dtype or mp.param_dtype  # DeepSpeed: communication_data_type, else the model dtype
    if stage == 0:
        accum = torch.float32 if mp.low_precision else mp.param_dtype
    elif stage == 3:
        accum = mp.master_dtype
    else:
        accum = mp.accum_dtype or mp.param_dtype
    return GradDtypes(reduce=reduce, accum=accum)
