"""``optimizer`` and ``scheduler`` sections.

Their ``params`` are checked against the chosen class's signature when the engine builds it
(:mod:`ds_engine.optimizers`, :mod:`ds_engine.lr_schedules`), so an unknown parameter is reported as
``optimizer.params.<name>`` with the closest valid name.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from ds_engine.config.base import ConfigModel


class OptimizerConfig(ConfigModel):
    """``optimizer``: the optimizer the engine builds when the client passes none."""

    type: str
    """Adam, AdamW, SGD, Adagrad, Lamb, Lion, or any ``torch.optim`` class name (case-insensitive)."""

    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the optimizer (``lr``, ``betas``, ``eps``, ``weight_decay``, ...).
    Adam/AdamW also take DeepSpeed's ``adam_w_mode`` and ``torch_adam``."""

    legacy_fusion: bool = False
    """DeepSpeed's legacy fused fp16 optimizer path. Accepted, has no effect on results."""

    @field_validator("params", mode="before")
    @classmethod
    def _reject_max_grad_norm(cls, value: Any) -> Any:
        if isinstance(value, dict) and "max_grad_norm" in value:
            raise ValueError("'max_grad_norm' is not an optimizer parameter; use the top-level 'gradient_clipping'")
        return value


class SchedulerConfig(ConfigModel):
    """``scheduler``: the LR schedule the engine builds and steps when the client passes none."""

    type: str
    """WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle, LRRangeTest, or any
    ``torch.optim.lr_scheduler`` class name."""

    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the schedule (e.g. ``warmup_num_steps``)."""
