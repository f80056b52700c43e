"""``optimizer`` and ``scheduler`` sections.

Their ``params`` are checked against the chosen class's signature when the engine builds it
(:mod:`ds_engine.optimizers`, :mod:`ds_engine.lr_schedules`), so an unknown parameter is reported as
``optimizer.params.<name>`` with the closest valid name. The values most optimizers share (``lr``,
``betas``, ``eps``, ``weight_decay``) are checked here, when the config is read, so that a bad one is
named by its key before any step runs; every other parameter passes through to the optimizer as is.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field, field_validator
from pydantic_core import PydanticCustomError

from ds_engine.config.base import ConfigModel
from ds_engine.config.effects import Effect, applied, no_effect


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
            raise ValueError(
                "'max_grad_norm' is not an optimizer parameter; use the top-level 'gradient_clipping'"
            )
        return value

    @field_validator("params", mode="after")
    @classmethod
    def _check_common_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        # At config time, naming the key: the optimizer itself would fail only at the first step
        # (or never, for a negative lr under a scheduler). Other params pass through untouched.
        for key, (valid, expected) in _PARAM_CHECKS.items():
            if key in value and not valid(value[key]):
                raise PydanticCustomError(
                    "param_value", "{expected}", {"subkey": key, "value": value[key], "expected": expected}
                )
        return value


def _real(value: Any) -> float | None:
    """``value`` as a finite float when it is a real number (a bool is not; a one-element tensor is)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        number = float(value)
    elif callable(getattr(value, "numel", None)) and value.numel() == 1:
        number = float(value.item())
    else:
        return None
    return number if math.isfinite(number) else None


def _at_least(bound: float, *, strict: bool = False) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        number = _real(value)
        return number is not None and (number > bound if strict else number >= bound)

    return check


def _betas(value: Any) -> bool:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return False
    return all((number := _real(beta)) is not None and 0.0 <= number < 1.0 for beta in value)


# The parameters most optimizers share: key -> (valid?, what is expected), checked when present.
_PARAM_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (_at_least(0.0), "expected a number >= 0"),
    "betas": (_betas, "expected two numbers in [0, 1), like [0.9, 0.999]"),
    "eps": (_at_least(0.0, strict=True), "expected a number > 0"),
    "weight_decay": (_at_least(0.0), "expected a number >= 0"),
}


class SchedulerConfig(ConfigModel):
    """``scheduler``: the LR schedule the engine builds and steps when the client passes none."""

    type: str
    """WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle, LRRangeTest, or any
    ``torch.optim.lr_scheduler`` class name."""

    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the schedule (e.g. ``warmup_num_steps``)."""


# Note [key effects] in ds_engine.config.effects.
OPTIMIZER_KEYS: dict[str, Effect] = {
    "type": applied("ds_engine.builders:build_optimizer", why="when the client passes no optimizer"),
    "params": applied("ds_engine.builders:build_optimizer"),
    "legacy_fusion": no_effect(
        "the optimizer step is chosen per device (ds_kernels); there is no legacy fused fp16 path"
    ),
}
SCHEDULER_KEYS: dict[str, Effect] = {
    "type": applied("ds_engine.builders:build_scheduler", why="when the client passes no scheduler"),
    "params": applied("ds_engine.builders:build_scheduler"),
}
TABLES: dict[type[BaseModel], tuple[str, Mapping[str, Effect]]] = {
    OptimizerConfig: ("optimizer", OPTIMIZER_KEYS),
    SchedulerConfig: ("scheduler", SCHEDULER_KEYS),
}
