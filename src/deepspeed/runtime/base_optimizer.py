"""`deepspeed.runtime.base_optimizer` (ds_zero.base_optimizer)."""

from ds_zero.base_optimizer import DeepSpeedOptimizer, ZeROOptimizer

__all__ = ["DeepSpeedOptimizer", "ZeROOptimizer"]
