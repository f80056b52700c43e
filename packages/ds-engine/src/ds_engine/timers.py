"""DeepSpeed's client-facing timers (``deepspeed.utils.timer``), as Megatron-style code uses them.

* :class:`SynchronizedWallClockTimer`: named timers (``timers("fwd").start()`` / ``.stop()``), read in
  milliseconds with ``elapsed()`` and printed with ``log(names)``.
* :class:`ThroughputTimer`: samples/s over optimizer steps, skipping the first ``start_step`` steps.
* :class:`NoopTimer`: the same surface, measuring nothing.

Note: [host clock] Every interval is read from the host clock after synchronizing the accelerator
(a no-op on the CPU), so a measured interval covers the device work queued inside it. DeepSpeed uses
device events where it can; the numbers agree up to the cost of the synchronization.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ds_engine.log import get_logger, print_dist

FORWARD_MICRO_TIMER = "fwd_microstep"
FORWARD_GLOBAL_TIMER = "fwd"
BACKWARD_MICRO_TIMER = "bwd_microstep"
BACKWARD_GLOBAL_TIMER = "bwd"
BACKWARD_INNER_MICRO_TIMER = "bwd_inner_microstep"
BACKWARD_INNER_GLOBAL_TIMER = "bwd_inner"
BACKWARD_REDUCE_MICRO_TIMER = "bwd_allreduce_microstep"
BACKWARD_REDUCE_GLOBAL_TIMER = "bwd_allreduce"
STEP_MICRO_TIMER = "step_microstep"
STEP_GLOBAL_TIMER = "step"
TIME_EPSILON = 1e-6
_GB = 1024**3


def _synchronize() -> None:
    from ds_accel import get_accelerator

    get_accelerator().synchronize()


def trim_mean(data: list[float], trim_percent: float) -> float:
    """The mean of ``data`` without the ``trim_percent`` smallest and largest values (0 for no data)."""
    if not 0.0 <= trim_percent <= 1.0:
        raise ValueError("trim_percent must be between 0 and 1")
    if not data:
        return 0.0
    ordered = sorted(data)
    cut = int(len(ordered) * trim_percent)
    kept = ordered[cut : len(ordered) - cut] or ordered
    return sum(kept) / len(kept)


class _Interval:
    """One named timer: a list of measured intervals (seconds) and whether one is open."""

    def __init__(self, name: str) -> None:
        self.name_ = name
        self.started_ = False
        self._start = 0.0
        self.records: list[float] = []

    def start(self) -> None:
        """Open an interval."""
        if self.started_:
            raise AssertionError(f"{self.name_} timer has already been started")
        _synchronize()
        self._start = time.perf_counter()
        self.started_ = True

    def stop(self, reset: bool = False, record: bool = False) -> None:
        """Close the open interval and keep its length (``reset``: forget earlier ones first)."""
        if not self.started_:
            raise AssertionError(f"{self.name_} timer is not started")
        _synchronize()
        if reset:
            self.records.clear()
        self.records.append(time.perf_counter() - self._start)
        self.started_ = False

    def reset(self) -> None:
        """Forget every interval (and close an open one without keeping it)."""
        self.started_ = False
        self.records.clear()

    def elapsed(self, reset: bool = True) -> float:
        """Total measured time in milliseconds; an open interval is counted up to now and stays open."""
        running = self.started_
        if running:
            self.stop()
        total_ms = 1000.0 * sum(self.records)
        if reset:
            self.reset()
        if running:
            self.start()
        return total_ms

    def mean(self) -> float:
        """Trimmed mean (10% each side) of the intervals, in seconds."""
        return trim_mean(self.records, 0.1)


class SynchronizedWallClockTimer:
    """A group of named timers (Megatron's ``timers``), created on first use."""

    Timer = _Interval

    def __init__(self) -> None:
        self.timers: dict[str, _Interval] = {}

    def get_timers(self) -> dict[str, _Interval]:
        """Every timer created so far, by name."""
        return self.timers

    def __call__(self, name: str) -> _Interval:
        if name not in self.timers:
            self.timers[name] = _Interval(name)
        return self.timers[name]

    @staticmethod
    def memory_usage() -> str:
        """The accelerator's allocated and cached memory, formatted for a log line."""
        from ds_accel import get_accelerator

        acc = get_accelerator()
        return (
            f" | mem_allocated: {acc.memory_allocated() / _GB:.4f} GB"
            f" | max_mem_allocated: {acc.max_memory_allocated() / _GB:.4f} GB"
            f" | cache_allocated: {acc.memory_reserved() / _GB:.4f} GB"
            f" | max_cache_allocated: {acc.max_memory_reserved() / _GB:.4f} GB"
        )

    def log(
        self,
        names: Iterable[str],
        normalizer: float = 1.0,
        reset: bool = True,
        memory_breakdown: bool = False,
        ranks: list[int] | None = None,
    ) -> None:
        """Print ``time (ms) | name: value | ...`` for the named timers (divided by ``normalizer``)."""
        if normalizer <= 0.0:
            raise ValueError("normalizer must be positive")
        line = "time (ms)" + "".join(
            f" | {name}: {self.timers[name].elapsed(reset=reset) / normalizer:.2f}"
            for name in names
            if name in self.timers
        )
        if memory_breakdown:
            line += self.memory_usage()
        print_dist(line, ranks=ranks or [0])

    def get_mean(self, names: Iterable[str], normalizer: float = 1.0, reset: bool = True) -> dict[str, float]:
        """Trimmed mean interval of each named timer, in milliseconds divided by ``normalizer``."""
        if normalizer <= 0.0:
            raise ValueError("normalizer must be positive")
        means = {
            name: self.timers[name].mean() * 1000.0 / normalizer for name in names if name in self.timers
        }
        if reset:
            for name in means:
                self.timers[name].reset()
        return means


class _NoopInterval:
    """:class:`_Interval`'s methods with its arguments (and any others, as DeepSpeed's), measuring nothing."""

    def start(self) -> None: ...
    def reset(self) -> None: ...
    def stop(self, reset: bool = False, record: bool = False, **kwargs: Any) -> None: ...
    def elapsed(self, reset: bool = True, **kwargs: Any) -> float:
        return 0.0

    def mean(self) -> float:
        return 0.0


class NoopTimer:
    """:class:`SynchronizedWallClockTimer`'s surface, measuring nothing (timers switched off)."""

    Timer = _NoopInterval

    def __init__(self) -> None:
        self.timer = _NoopInterval()

    def __call__(self, name: str) -> _NoopInterval:
        return self.timer

    def get_timers(self) -> dict[str, Any]:
        return {}

    def log(
        self,
        names: Iterable[str],
        normalizer: float = 1.0,
        reset: bool = True,
        memory_breakdown: bool = False,
        ranks: list[int] | None = None,
    ) -> None:
        return None

    def get_mean(self, names: Iterable[str], normalizer: float = 1.0, reset: bool = True) -> None:
        return None


class ThroughputTimer:
    """Samples per second over optimizer steps (DeepSpeed's constructor and ``start``/``stop``).

    ``config`` needs ``enabled`` and ``synchronized`` (``timers.throughput`` of the config); the first
    ``start_step`` global steps are not timed (warm-up). Every ``steps_per_output`` global steps,
    ``stop(global_step=True)`` logs the running and current rates through ``logging_fn``.
    """

    def __init__(
        self,
        config: Any,
        batch_size: int | None,
        start_step: int = 2,
        steps_per_output: int | None = None,
        monitor_memory: bool = False,
        logging_fn: Callable[[str], Any] | None = None,
    ) -> None:
        self.config = config
        self.batch_size = 1 if batch_size is None else batch_size
        self.start_step = start_step
        self.steps_per_output = steps_per_output
        self.monitor_memory = monitor_memory
        self.logging = logging_fn or get_logger().info
        self.start_time = 0.0
        self.end_time = 0.0
        self.started = False
        self.initialized = False
        self.epoch_count = 0
        self.micro_step_count = 0
        self.global_step_count = 0
        self.total_elapsed_time = 0.0
        self.step_elapsed_time = 0.0

    def update_epoch_count(self) -> None:
        """A new epoch begins: micro-steps count from zero again."""
        self.epoch_count += 1
        self.micro_step_count = 0

    def _sync(self) -> None:
        if getattr(self.config, "synchronized", True):
            _synchronize()

    def start(self) -> None:
        """Open a micro-step (timed once past the warm-up steps)."""
        if not self.config.enabled:
            return
        self.initialized = True
        self.started = True
        if self.global_step_count >= self.start_step:
            self._sync()
            self.start_time = time.time()

    def stop(self, global_step: bool = False, report_speed: bool = True) -> None:
        """Close the micro-step; ``global_step``: it ended an optimizer step."""
        if not self.config.enabled or not self.started:
            return
        self.started = False
        self.micro_step_count += 1
        if global_step:
            self.global_step_count += 1
        if self.start_time <= 0:
            return
        self._sync()
        self.end_time = time.time()
        duration = self.end_time - self.start_time
        self.total_elapsed_time += duration
        self.step_elapsed_time += duration
        if not global_step:
            return
        if report_speed and self.steps_per_output and self.global_step_count % self.steps_per_output == 0:
            self.logging(self._report())
        self.step_elapsed_time = 0.0

    def _report(self) -> str:
        from ds_accel import get_accelerator

        acc = get_accelerator()
        current = self.batch_size / (self.step_elapsed_time + TIME_EPSILON)
        return (
            f"epoch={self.epoch_count}/micro_step={self.micro_step_count}/global_step={self.global_step_count}, "
            f"RunningAvgSamplesPerSec={self.avg_samples_per_sec()}, CurrSamplesPerSec={current}, "
            f"MemAllocated={round(acc.memory_allocated() / _GB, 2)}GB, "
            f"MaxMemAllocated={round(acc.max_memory_allocated() / _GB, 2)}GB"
        )

    def avg_samples_per_sec(self) -> float:
        """Samples per second averaged over the timed steps (``-inf`` before any)."""
        timed_steps = self.global_step_count - self.start_step
        if self.global_step_count > 0 and timed_steps > 0 and self.total_elapsed_time > 0:
            return self.batch_size / (self.total_elapsed_time / timed_steps)
        return float("-inf")


# The engine's phases and the timers each one runs (DeepSpeed's micro- and global-step timer names).
# Note: [backward_allreduce] Gradient reduction here runs inside backward (hooks, overlapped) and its
# remaining wait at the start of the optimizer step, so ``bwd_allreduce`` is never started and reads 0,
# as DeepSpeed's does when its reduction is overlapped; ``bwd_inner`` covers the autograd pass with the
# overlapped reductions, ``step`` the remaining wait plus the update.
ENGINE_PHASES: dict[str, tuple[str, str]] = {
    "forward": (FORWARD_MICRO_TIMER, FORWARD_GLOBAL_TIMER),
    "backward": (BACKWARD_MICRO_TIMER, BACKWARD_GLOBAL_TIMER),
    "backward_inner": (BACKWARD_INNER_MICRO_TIMER, BACKWARD_INNER_GLOBAL_TIMER),
    "backward_allreduce": (BACKWARD_REDUCE_MICRO_TIMER, BACKWARD_REDUCE_GLOBAL_TIMER),
    "step": (STEP_MICRO_TIMER, STEP_GLOBAL_TIMER),
}
GLOBAL_TIMERS = [pair[1] for pair in ENGINE_PHASES.values()]
MICRO_TIMERS = [pair[0] for pair in ENGINE_PHASES.values()]
# DeepSpeed's monitor event per global timer.
TIMER_EVENTS = {
    FORWARD_GLOBAL_TIMER: "Train/Samples/elapsed_time_ms_forward",
    BACKWARD_GLOBAL_TIMER: "Train/Samples/elapsed_time_ms_backward",
    BACKWARD_INNER_GLOBAL_TIMER: "Train/Samples/elapsed_time_ms_backward_inner",
    BACKWARD_REDUCE_GLOBAL_TIMER: "Train/Samples/elapsed_time_ms_backward_allreduce",
    STEP_GLOBAL_TIMER: "Train/Samples/elapsed_time_ms_step",
}


class EngineTimers:
    """``wall_clock_breakdown`` for the engine: ``start(phase)`` / ``stop(phase)`` drive DeepSpeed's timers
    in ``timers`` (``engine.timers``); ``close_step()`` reads and resets them at each optimizer step.

    Disabled (``timers`` is a :class:`NoopTimer`), every call returns at once: no synchronization on the
    hot path."""

    def __init__(self, timers: SynchronizedWallClockTimer | NoopTimer) -> None:
        self.timers = timers
        # the same object where enabled, typed as the timer that measures; None: timers switched off
        self._wall = timers if isinstance(timers, SynchronizedWallClockTimer) else None
        self.enabled = self._wall is not None
        self.last_step_ms: dict[str, float] = {}  # the latest optimizer step (engine.get_wall_clock_timers())
        self._sums_ms: dict[str, float] = {}
        self._steps = 0

    def start(self, phase: str) -> None:
        """Open the phase's micro and global timers."""
        if self._wall is None:
            return
        for name in ENGINE_PHASES[phase]:
            timer = self._wall(name)
            if not timer.started_:  # a forward that raised left it open: measure from now
                timer.start()

    def stop(self, phase: str) -> None:
        """Close the phase's timers."""
        if self._wall is None:
            return
        for name in ENGINE_PHASES[phase]:
            timer = self._wall(name)
            if timer.started_:
                timer.stop()

    def close_step(self) -> dict[str, float]:
        """Milliseconds each timer measured during the optimizer step that just ended (then reset)."""
        if not self.enabled:
            return {}
        self.last_step_ms = {
            name: self.timers(name).elapsed(reset=True) for name in MICRO_TIMERS + GLOBAL_TIMERS
        }
        for name, ms in self.last_step_ms.items():
            self._sums_ms[name] = self._sums_ms.get(name, 0.0) + ms
        self._steps += 1
        return self.last_step_ms

    def monitor_events(self, step_ms: dict[str, float], global_samples: int) -> list[tuple[str, float, int]]:
        """DeepSpeed's ``Train/Samples/elapsed_time_ms_*`` events for one step."""
        return [(event, step_ms.get(name, 0.0), global_samples) for name, event in TIMER_EVENTS.items()]

    def summary(self) -> str:
        """``time (ms) | fwd_microstep: .. | ... | fwd: .. | ...``: per optimizer step, averaged since the last
        summary (then reset)."""
        steps = max(self._steps, 1)
        line = "time (ms)" + "".join(
            f" | {name}: {self._sums_ms.get(name, 0.0) / steps:.2f}" for name in MICRO_TIMERS + GLOBAL_TIMERS
        )
        self._sums_ms.clear()
        self._steps = 0
        return line
