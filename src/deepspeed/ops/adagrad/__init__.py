"""``deepspeed.ops.adagrad``: ``DeepSpeedCPUAdagrad`` (an alias of ds_kernels')."""

from ds_kernels import DeepSpeedCPUAdagrad

__all__ = ["DeepSpeedCPUAdagrad"]
