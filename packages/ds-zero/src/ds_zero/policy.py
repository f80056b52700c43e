"""Small frozen policy values that say how a model and optimizer are wrapped.

The engine builds one :class:`ZeroPolicy` from the config; :func:`ds_zero.wrap` reads it and composes
the parts (gradient reducer, master weights, loss scaler, clipping) that the chosen stage needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

OffloadDevice = Literal["none", "cpu", "nvme"]


@dataclass(frozen=True)
class MixedPrecisionPolicy:
    """Dtypes of the model, of gradient accumulation and of the gradient reduction.

    With ``param_dtype`` below fp32, the optimizer steps fp32 master copies. ``accum_dtype`` (DeepSpeed's
    ``data_types.grad_accum_dtype``) is the dtype gradients accumulate in across micro-batches, None for
    each stage's default; ``reduce_dtype`` (None: the model's dtype) is the dtype gradients are averaged
    in across ranks (Note [gradient dtypes] in :mod:`ds_zero.dtypes`).

    ``master_dtype`` below fp32 (DeepSpeed's ``bf16_master_weights_and_grads``, stages 1-3): the weights
    the optimizer steps and their gradients stay in that dtype, with no fp32 copy; the optimizer's
    states are kept in ``optimizer_state_dtype`` (Note [low-precision masters] in
    :mod:`ds_zero.low_precision_masters`).
    """

    param_dtype: torch.dtype = torch.float32
    accum_dtype: torch.dtype | None = None
    reduce_dtype: torch.dtype | None = None
    master_dtype: torch.dtype = torch.float32
    optimizer_state_dtype: torch.dtype = torch.float32

    @property
    def low_precision(self) -> bool:
        """Whether the model runs below fp32 (so fp32 master weights exist)."""
        return self.param_dtype != torch.float32


@dataclass(frozen=True)
class LossScalePolicy:
    """fp16 loss scaling: a static scale, or DeepSpeed's dynamic scaler with hysteresis.

    Dynamic: overflows halve the scale once ``hysteresis`` of them have been absorbed (never below
    ``min_scale``); ``window`` overflow-free steps double it.
    """

    dynamic: bool = True
    static_scale: float = 1.0
    initial_scale: float = 2.0**16
    window: int = 1000
    hysteresis: int = 2
    consecutive_hysteresis: bool = False
    min_scale: float = 1.0
    raise_at_min_scale: bool = True


DEFAULT_BUCKET_NUMEL = 500_000_000  # DeepSpeed's reduce_bucket_size default
SOCKET_BUCKET_BYTES = 25 << 20  # PyTorch DDP's default bucket


@dataclass(frozen=True)
class ReducePolicy:
    """How gradients are averaged across data-parallel ranks.

    DeepSpeed's scaling rule: by default (post-scaling) gradients are divided by
    ``predivide_factor`` before the sum and by ``world_size / predivide_factor`` after it;
    ``prescale`` divides by ``world_size`` before the sum instead. ``average=False`` sums.
    """

    bucket_numel: int | None = None
    """Elements per reduction bucket (stage 0) or flat unit (stages 1-2) as the config set it
    (``reduce_bucket_size``); None where it did not: :meth:`bucket_numel_for` adapts it."""
    average: bool = True
    prescale: bool = False
    predivide_factor: float = 1.0
    overlap: bool = True
    """Start reductions asynchronously while backward runs (the engine's ``overlap_comm``; stage 0 always)."""
    reduce_scatter: bool = True
    """Stages 1-2: reduce-scatter each unit's gradients; ``False`` all-reduces them and keeps this rank's
    chunk (DeepSpeed's ``reduce_scatter: false``: same numbers, N times the traffic)."""

    def bucket_numel_for(self, *, on_host: bool, itemsize: int) -> int:
        """Elements per bucket, for a reduction through shared memory (``on_host``) or through c10d.

        Note: [adaptive buckets] Where the config does not set ``reduce_bucket_size``, the size follows
        the transport. Through shared memory a reduction runs in place, row by row, and overlaps
        nothing, so fewer buckets only save set-up: DeepSpeed's default (one bucket up to 500M
        elements) stays. Through c10d (gloo across hosts, NCCL) each bucket's reduction runs
        asynchronously while backward computes the rest, but a bucket as big as the model starts only
        when backward ends and overlaps nothing: buckets of 25 MiB in the reduce dtype (PyTorch DDP's
        default) start the first reduction after the last layers' gradients. A set value always wins."""
        if self.bucket_numel is not None:
            return self.bucket_numel
        return DEFAULT_BUCKET_NUMEL if on_host else max(1, SOCKET_BUCKET_BYTES // itemsize)

    def averaging_factors(self, world_size: int) -> tuple[float, float]:
        """(divide before the sum, divide after it) on ``world_size`` ranks: the one averaging rule
        every stage applies."""
        if not self.average:
            return 1.0, 1.0
        if self.prescale:
            return float(world_size), 1.0
        return self.predivide_factor, world_size / self.predivide_factor


@dataclass(frozen=True)
class NvmePolicy:
    """Optimizer states swapped to files under ``path`` (``offload_optimizer.device: nvme``) through the
    asynchronous I/O engine (:mod:`ds_kernels.aio`, the ``aio`` config section)."""

    path: str = ""
    buffer_count: int = 4
    pipeline_read: bool = False
    pipeline_write: bool = False
    block_size: int = 1 << 20
    queue_depth: int = 8
    threads: int = 1


@dataclass(frozen=True)
class ParamNvmePolicy:
    """Stage-3 parameter shards swapped to files under ``path`` (``offload_param.device: nvme``;
    Note [parameter swapping] in :mod:`ds_zero.stage3.nvme_params`). ``buffer_count``: staging buffers
    (and reads in flight + 1); ``max_in_cpu``: this rank's shard elements kept in memory."""

    path: str = ""
    buffer_count: int = 5
    max_in_cpu: int = 1_000_000_000
    block_size: int = 1 << 20
    queue_depth: int = 8
    threads: int = 1


@dataclass(frozen=True)
class OffloadPolicy:
    """Where optimizer states (and, at stage 3, parameters) live."""

    optimizer_device: OffloadDevice = "none"
    param_device: OffloadDevice = "none"
    pin_memory: bool = True
    nvme: NvmePolicy | None = None  # with optimizer_device "nvme"
    param_nvme: ParamNvmePolicy | None = None  # with param_device "nvme" (stage 3)


@dataclass(frozen=True)
class ZenFlowPolicy:
    """ZenFlow's schedule (``zero_optimization.zenflow``, stages 1-2 with ``offload_optimizer.device: cpu``;
    Note [zenflow] in :mod:`ds_zero.zenflow`), every value resolved by the engine.

    ``select_interval``: steps between column re-selections (0: select once, when warm-up ends);
    ``update_interval``: steps between CPU updates of the unselected columns; ``offload``: keep the
    selective update's moments in host memory between steps."""

    topk_ratio: float = 0.1
    select_interval: int = 0
    update_interval: int = 1
    overlap_step: bool = False
    offload: bool = False
    full_warm_up_rounds: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.topk_ratio < 1.0:
            raise ValueError(f"zenflow topk_ratio must be in (0, 1), got {self.topk_ratio}")
        if self.update_interval < 1:
            raise ValueError(f"zenflow update_interval must be at least 1, got {self.update_interval}")
        if self.select_interval < 0 or self.full_warm_up_rounds < 0:
            raise ValueError("zenflow select_interval and full_warm_up_rounds must not be negative")
        if self.select_interval and self.select_interval < self.update_interval:
            raise ValueError(
                f"zenflow select_interval ({self.select_interval}) must be at least update_interval "
                f"({self.update_interval})"
            )


@dataclass(frozen=True)
class ZeroPolicy:
    """Everything :func:`ds_zero.wrap` needs to know.

    ``check_overflow`` skips steps whose gradients hold inf/NaN on any rank (always on with a loss scale;
    Note [non-finite gradients] in :mod:`ds_zero.trainer`). ``clip_grad`` is the max global L2 norm (0: no clipping).
    """

    stage: int = 0
    mixed_precision: MixedPrecisionPolicy = field(default_factory=MixedPrecisionPolicy)
    loss_scale: LossScalePolicy | None = None
    reduce: ReducePolicy = field(default_factory=ReducePolicy)
    offload: OffloadPolicy = field(default_factory=OffloadPolicy)
    clip_grad: float = 0.0
    check_overflow: bool = True
    zenflow: ZenFlowPolicy | None = None
    """Stages 1-2 with CPU offload: ZenFlow's selective updates (None: every step updates everything)."""
