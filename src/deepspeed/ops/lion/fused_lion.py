"""`deepspeed.ops.lion.fused_lion`: DeepSpeed's module path for ``FusedLion`` (an alias of ds_kernels')."""

from ds_kernels import FusedLion

__all__ = ["FusedLion"]
