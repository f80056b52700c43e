"""``deepspeed.ops.op_builder``: DeepSpeed's op builders (aliases of :mod:`ds_kernels.op_builder`).

There is no compile step: a builder's ``is_compatible()`` says whether the op is implemented here
and ``load()`` returns its Python/Triton module, or raises naming the op.
"""

from ds_kernels.op_builder import (
    ALL_OPS,
    AsyncIOBuilder,
    CPUAdagradBuilder,
    CPUAdamBuilder,
    CPULionBuilder,
    FusedAdamBuilder,
    FusedLambBuilder,
    FusedLionBuilder,
    InferenceBuilder,
    OpBuilder,
    OpNotAvailableError,
    QuantizerBuilder,
    SparseAttnBuilder,
    TransformerBuilder,
)

__all__ = [
    "ALL_OPS",
    "AsyncIOBuilder",
    "CPUAdagradBuilder",
    "CPUAdamBuilder",
    "CPULionBuilder",
    "FusedAdamBuilder",
    "FusedLambBuilder",
    "FusedLionBuilder",
    "InferenceBuilder",
    "OpBuilder",
    "OpNotAvailableError",
    "QuantizerBuilder",
    "SparseAttnBuilder",
    "TransformerBuilder",
]
