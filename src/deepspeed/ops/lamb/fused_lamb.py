"""`deepspeed.ops.lamb.fused_lamb`: DeepSpeed's module path for ``FusedLamb`` (an alias of ds_kernels')."""

from ds_kernels import FusedLamb

__all__ = ["FusedLamb"]
