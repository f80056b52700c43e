"""`deepspeed.ops.lion.cpu_lion`: DeepSpeed's module path for ``DeepSpeedCPULion`` (an alias of ds_kernels')."""

from ds_kernels import DeepSpeedCPULion

__all__ = ["DeepSpeedCPULion"]
