"""`deepspeed.ops.adam.fused_adam`: DeepSpeed's module path for ``FusedAdam`` (an alias of ds_kernels')."""

from ds_kernels import FusedAdam

__all__ = ["FusedAdam"]
