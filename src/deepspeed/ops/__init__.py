"""DeepSpeed's ``deepspeed.ops``: the fused optimizers, re-exported from ds_kernels (no build step)."""

from . import adagrad, adam, lamb, lion, op_builder

__all__ = ["adagrad", "adam", "lamb", "lion", "op_builder"]
