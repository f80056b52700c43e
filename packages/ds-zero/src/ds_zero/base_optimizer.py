"""Base classes of the optimizers the engine hands to clients (``engine.optimizer``).

``deepspeed.runtime.base_optimizer.DeepSpeedOptimizer`` and ``ZeROOptimizer`` alias these: clients test
``isinstance`` against them and some re-class instances, so they carry no state of their own.
"""

from __future__ import annotations


class DeepSpeedOptimizer:
    """Marker base of every engine optimizer."""


class ZeROOptimizer(DeepSpeedOptimizer):
    """Marker base of the optimizers built by :func:`ds_zero.wrap` (every stage, stage 0 included)."""
