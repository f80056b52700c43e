"""``deepspeed.ops.op_builder.all_ops``: ``ALL_OPS`` (op name -> builder), as ds_report reads it."""

from ds_kernels.op_builder import ALL_OPS

__all__ = ["ALL_OPS"]
