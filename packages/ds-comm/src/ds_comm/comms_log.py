"""An optional record of every collective: op, bytes, wall time, group size.

Tests read it to check communication volume (e.g. "stage 2 does one reduce-scatter of the gradients
per step"); benchmarks read it for bandwidth. Off by default: when off, logging costs one flag check.

Note [what the time means]: ``seconds`` is the host wall time of the call. For a synchronous call on
a synchronised device (CPU/gloo) that is the collective's duration; for ``async_op=True`` or a
stream-ordered device (CUDA) it is only the launch time unless ``sync_timing`` is on, which makes
each logged collective wait for completion (slower, but honest durations).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ds_comm.bandwidth import bandwidth_gbps, convert_size


@dataclass(frozen=True)
class CommRecord:
    """One collective: ``nbytes`` is the payload (Note in :mod:`ds_comm.collectives`), ``caller`` the calling
    function when ``comms_logger.debug`` is on."""

    op: str
    nbytes: int
    seconds: float
    group_size: int
    async_op: bool = False
    caller: str | None = None

    @property
    def log_name(self) -> str:
        """DeepSpeed's record name: the op, plus ``| [Caller Func: f]`` in debug mode."""
        return self.op if self.caller is None else f"{self.op} | [Caller Func: {self.caller}]"


class CommsLog:
    """Thread-safe list of :class:`CommRecord`, with DeepSpeed's switches: ``enabled``, ``verbose`` (print
    each op), ``prof_all`` (every op; else only ``prof_ops``), ``debug`` (record the caller)."""

    def __init__(self) -> None:
        self.enabled = False
        self.sync_timing = False
        self.verbose = False
        self.prof_all = True
        self.prof_ops: list[str] = []
        self.debug = False
        self._records: list[CommRecord] = []
        self._lock = threading.Lock()

    def wants(self, op: str) -> bool:
        """Whether ``op`` is recorded under ``prof_all`` / ``prof_ops``."""
        return self.prof_all or op in self.prof_ops

    def add(self, record: CommRecord) -> None:
        with self._lock:
            self._records.append(record)
        if self.verbose:
            algbw, busbw = bandwidth_gbps(record.op, record.nbytes, record.seconds, record.group_size)
            print(
                f"comm op: {record.log_name} | time (ms): {record.seconds * 1e3:.2f} | msg size: "
                f"{convert_size(record.nbytes)} | algbw (Gbps): {algbw:.2f} | busbw (Gbps): {busbw:.2f}",
                flush=True,
            )

    def records(self) -> list[CommRecord]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per op: count, total bytes, total seconds."""
        table: dict[str, dict[str, float]] = {}
        for rec in self.records():
            row = table.setdefault(rec.op, {"count": 0, "bytes": 0, "seconds": 0.0})
            row["count"] += 1
            row["bytes"] += rec.nbytes
            row["seconds"] += rec.seconds
        return table


LOG = CommsLog()


def enable(
    *,
    sync_timing: bool = False,
    verbose: bool = False,
    prof_all: bool = True,
    prof_ops: list[str] | None = None,
    debug: bool = False,
) -> None:
    """Record collectives from now on (with DeepSpeed's ``comms_logger`` switches)."""
    LOG.enabled, LOG.sync_timing, LOG.verbose = True, sync_timing, verbose
    LOG.prof_all, LOG.prof_ops, LOG.debug = prof_all, list(prof_ops or []), debug


def disable() -> None:
    LOG.enabled = False


def records() -> list[CommRecord]:
    return LOG.records()


def clear() -> None:
    LOG.clear()


def summary() -> dict[str, dict[str, float]]:
    return LOG.summary()


@contextmanager
def capture() -> Iterator[CommsLog]:
    """Log collectives for the duration of a block, restoring the previous switch afterwards."""
    was = LOG.enabled
    LOG.clear()
    LOG.enabled = True
    try:
        yield LOG
    finally:
        LOG.enabled = was


def timed(
    op: str,
    nbytes: int,
    group_size: int,
    async_op: bool,
    call: Callable[[], Any],
    synchronize: Callable[[], None],
) -> Any:
    """Run ``call`` and record it (the caller has already checked ``LOG.enabled``)."""
    if not LOG.wants(op):
        return call()
    caller = _caller() if LOG.debug else None
    start = time.perf_counter()
    result = call()
    if LOG.sync_timing:
        if async_op and result is not None:
            result.wait()
        synchronize()
    LOG.add(CommRecord(op, nbytes, time.perf_counter() - start, group_size, async_op, caller))
    return result


def _caller() -> str:
    """The first function outside ds_comm on the stack (who asked for the collective)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("ds_comm"):
        frame = frame.f_back
    return frame.f_code.co_name if frame is not None else "?"
