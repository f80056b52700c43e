"""`deepspeed.ops.adam.cpu_adam`: DeepSpeed's module path for ``DeepSpeedCPUAdam`` (an alias of ds_kernels')."""

from ds_kernels import DeepSpeedCPUAdam

__all__ = ["DeepSpeedCPUAdam"]
