"""``deepspeed.ops.lion``: ``FusedLion`` and ``DeepSpeedCPULion`` (aliases of ds_kernels')."""

from ds_kernels import DeepSpeedCPULion, FusedLion

__all__ = ["DeepSpeedCPULion", "FusedLion"]
