"""`deepspeed.ops.adagrad.cpu_adagrad`: DeepSpeed's module path for ``DeepSpeedCPUAdagrad`` (an alias of ds_kernels')."""

from ds_kernels import DeepSpeedCPUAdagrad

__all__ = ["DeepSpeedCPUAdagrad"]
