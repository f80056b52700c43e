"""The dtypes gradients are reduced and accumulated in, resolved once for every stage.

Note: [gradient dtypes] DeepSpeed 0.19's defaults (``engine.communication_data_type``,
``engine.get_data_types``): gradients are averaged across ranks in ``communication_data_type`` when
it is set, else in the model's dtype (fp16 under fp16, bf16 under bf16, fp32 otherwise), at every
stage. Every stage here reduces in :func:`grad_dtypes`'s ``reduce``, so a bf16 run moves bf16
gradients at stage 0, 1, 2 and 3 alike (half the bytes of fp32), as DeepSpeed does; set
``communication_data_type: fp32`` for fp32 reductions.

Accumulation across micro-batches is where each stage keeps the gradient between backward passes,
reported as ``accum``: stage 0 adds each micro-batch into the fp32 master gradients (fp32 under
fp16/bf16), stage 1 lets autograd accumulate ``p.grad`` (the model dtype), stage 2 adds reduced
shards in the model dtype, stage 3 accumulates FSDP2's sharded gradients in the shard (master) dtype.
DeepSpeed accumulates in ``data_types.grad_accum_dtype`` (default: the model dtype); this project does
not yet follow an explicit ``grad_accum_dtype`` everywhere (stages 0 and 3 refuse a low-precision one).
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
        accum = mp.param_dtype
    return GradDtypes(reduce=reduce, accum=accum)
