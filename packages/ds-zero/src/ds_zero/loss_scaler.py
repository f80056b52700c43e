"""Loss scalers: static, and DeepSpeed's dynamic scaler with hysteresis.

A scaler multiplies the loss before backward (``scale``) and, after each optimizer step attempt, is
told whether the gradients overflowed (``update``). The dynamic scaler follows DeepSpeed's rule:

* overflow: if the hysteresis budget is spent (``cur_hysteresis == 1`` or ``hysteresis == 1``), the
  scale halves (not below ``min_scale``; overflowing again at the minimum is an error when
  ``raise_at_min_scale``), otherwise the budget shrinks by one;
* no overflow: with ``consecutive_hysteresis`` the budget refills; every ``window`` overflow-free
  steps since the last overflow the scale doubles (and, without ``consecutive_hysteresis``, the
  budget refills then).
"""

from __future__ import annotations

import logging
from typing import Any

from ds_zero.policy import LossScalePolicy

logger = logging.getLogger("ds_zero")


class LossScaleError(RuntimeError):
    """The dynamic loss scale cannot go lower: training keeps overflowing."""


class StaticLossScaler:
    """A constant loss scale (1.0 means no scaling)."""

    dynamic = False

    def __init__(self, scale: float = 1.0) -> None:
        self.cur_scale = float(scale)

    @property
    def loss_scale(self) -> float:
        """The current scale."""
        return self.cur_scale

    def update(self, overflow: bool) -> None:
        """Static scales never change."""

    def state_dict(self) -> dict[str, Any]:
        """Plain values only (checkpoints load with ``weights_only=True``)."""
        return {"dynamic": False, "cur_scale": self.cur_scale}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore the scale."""
        self.cur_scale = float(sd["cur_scale"])


class DynamicLossScaler(StaticLossScaler):
    """DeepSpeed's dynamic loss scaler (see the module docstring for the rule)."""

    dynamic = True

    def __init__(self, policy: LossScalePolicy, *, rank: int = 0) -> None:
        super().__init__(policy.initial_scale)
        self.scale_factor = 2.0
        self.scale_window = policy.window
        self.min_scale = float(policy.min_scale)
        self.delayed_shift = policy.hysteresis
        self.cur_hysteresis = policy.hysteresis
        self.consecutive_hysteresis = policy.consecutive_hysteresis
        self.raise_at_min_scale = policy.raise_at_min_scale
        self.cur_iter = 0
        self.last_overflow_iter = -1
        self._rank = rank

    def update(self, overflow: bool) -> None:
        """Adjust the scale after a step attempt."""
        if overflow:
            self._on_overflow()
            self.last_overflow_iter = self.cur_iter
        else:
            if self.consecutive_hysteresis:
                self.cur_hysteresis = self.delayed_shift
            stable = self.cur_iter - self.last_overflow_iter - 1
            if stable > 0 and stable % self.scale_window == 0:
                if not self.consecutive_hysteresis:
                    self.cur_hysteresis = self.delayed_shift
                self.cur_scale *= self.scale_factor
        self.cur_iter += 1

    def _on_overflow(self) -> None:
        if self.delayed_shift == 1 or self.cur_hysteresis == 1:
            if self.cur_scale == self.min_scale and self.raise_at_min_scale:
                raise LossScaleError(
                    f"loss scale already at its minimum ({self.min_scale}) and gradients still overflow; "
                    "lower the learning rate or raise fp16.min_loss_scale"
                )
            new = max(self.cur_scale / self.scale_factor, self.min_scale)
            if self._rank == 0:
                logger.info("OVERFLOW: skipping step; loss scale %s -> %s", self.cur_scale, new)
            self.cur_scale = new
        else:
            if self._rank == 0:
                logger.info(
                    "OVERFLOW: skipping step; loss scale stays %s, hysteresis %d -> %d",
                    self.cur_scale,
                    self.cur_hysteresis,
                    self.cur_hysteresis - 1,
                )
            self.cur_hysteresis -= 1

    def state_dict(self) -> dict[str, Any]:
        """Plain values only."""
        return {
            "dynamic": True,
            "cur_scale": self.cur_scale,
            "cur_iter": self.cur_iter,
            "last_overflow_iter": self.last_overflow_iter,
            "cur_hysteresis": self.cur_hysteresis,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore the scale and the counters that drive its changes."""
        self.cur_scale = float(sd["cur_scale"])
        self.cur_iter = int(sd.get("cur_iter", 0))
        self.last_overflow_iter = int(sd.get("last_overflow_iter", -1))
        self.cur_hysteresis = int(sd.get("cur_hysteresis", self.delayed_shift))


def make_loss_scaler(policy: LossScalePolicy | None, *, rank: int = 0) -> StaticLossScaler:
    """The scaler a policy asks for (no policy: a scale of 1)."""
    if policy is None:
        return StaticLossScaler(1.0)
    if policy.dynamic:
        return DynamicLossScaler(policy, rank=rank)
    return StaticLossScaler(policy.static_scale)
