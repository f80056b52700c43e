"""Which ZenFlow step does what (Note [zenflow] in :mod:`ds_zero.zenflow`): pure functions of the step."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ZenFlowSchedule:
    """Warm-up, selection and update boundaries for ZenFlow step ``t`` (counted from 0).

    ``select_interval`` may change once the engine knows the epoch length (``select_strategy: epoch``)."""

    warm_up: int
    update_interval: int
    select_interval: int

    def in_warm_up(self, t: int) -> bool:
        """An ordinary full step."""
        return t < self.warm_up

    def selects(self, t: int) -> bool:
        """Columns are (re)selected before this step's selective update."""
        if t < self.warm_up:
            return False
        return t == self.warm_up or bool(self.select_interval and t % self.select_interval == 0)

    def updates(self, t: int) -> bool:
        """The CPU step runs at the end of this step (the interval ends, or a selection follows)."""
        if t < self.warm_up:
            return False
        if (t + 1 - self.warm_up) % self.update_interval == 0:
            return True
        return bool(self.select_interval and (t + 1) % self.select_interval == 0)
