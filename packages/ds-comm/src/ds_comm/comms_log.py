"""An optional record of every collective: op, bytes, wall time, group size.

Tests read it to check communication volume (e.g. "stage 2 does one reduce-scatter of the gradients
per step"); benchmarks read it for bandwidth. Off by default: when off, logging costs one flag check.

Note [what the time means]: ``seconds`` is the host wall time of the call. For a synchronous call on
a synchronised device (CPU/gloo) that is the collective's duration; for ``async_op=True`` or a
stream-ordered device (CUDA) it is only the launch time unless ``sync_timing`` is on, which makes
each logged collective wait for completion (slower, but honest durations).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CommRecord:
    op: str
    nbytes: int
    seconds: float
    group_size: int
    async_op: bool = False


class CommsLog:
    """Thread-safe list of :class:`CommRecord`, with an on/off switch."""

    def __init__(self) -> None:
        self.enabled = False
        self.sync_timing = False
        self.verbose = False
        self._records: list[CommRecord] = []
        self._lock = threading.Lock()

    def add(self, record: CommRecord) -> None:
        with self._lock:
            self._records.append(record)
        if self.verbose:
            print(f"[ds_comm] {record.op}: {record.nbytes} B over {record.group_size} ranks in {record.seconds * 1e3:.3f} ms")

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


def enable(*, sync_timing: bool = False, verbose: bool = False) -> None:
    LOG.enabled, LOG.sync_timing, LOG.verbose = True, sync_timing, verbose


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


def timed(op: str, nbytes: int, group_size: int, async_op: bool, call: Callable[[], Any], synchronize: Callable[[], None]) -> Any:
    """Run ``call`` and record it (the caller has already checked ``LOG.enabled``)."""
    start = time.perf_counter()
    result = call()
    if LOG.sync_timing:
        if async_op and result is not None:
            result.wait()
        synchronize()
    LOG.add(CommRecord(op, nbytes, time.perf_counter() - start, group_size, async_op))
    return result
