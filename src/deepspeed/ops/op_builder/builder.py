"""``deepspeed.ops.op_builder.builder``: the builder base class (alias of ds_kernels')."""

from ds_kernels.op_builder import OpBuilder

__all__ = ["OpBuilder"]
