"""A record of every Triton compilation that a ds_kernels launch triggered.

Importing ds_kernels compiles nothing. Triton compiles a kernel the first time it is launched with
a new specialization (dtypes, constexpr flags, argument alignment); that first launch blocks the
host for the compile. :func:`timed_launch` wraps each launch, notices when the kernel's cache grew,
and records the host time of that launch as a :class:`CompileRecord`, also logged at INFO on the
``ds_kernels`` logger. Triton's on-disk cache makes a later process's "compile" a load, which the
record shows as a short time: it measures what the user waited, not the compiler alone.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["CompileRecord", "clear_compile_records", "compile_records", "timed_launch"]

log = logging.getLogger("ds_kernels")


@dataclass(frozen=True)
class CompileRecord:
    """One compilation: which kernel, under which compile-time constants, and how long it took."""

    kernel: str
    constants: tuple[tuple[str, str], ...]
    seconds: float
    interpreted: bool


_records: list[CompileRecord] = []
_seen_interpreted: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
_lock = threading.Lock()


def compile_records() -> list[CompileRecord]:
    """Every compilation so far in this process, oldest first."""
    with _lock:
        return list(_records)


def clear_compile_records() -> None:
    """Forget the records (compiled kernels stay cached in Triton)."""
    with _lock:
        _records.clear()
        _seen_interpreted.clear()


def _cached_variants(kernel: Any) -> int | None:
    """Number of compiled variants Triton holds for ``kernel``; None when it keeps no cache
    (the interpreter) or its layout is unknown."""
    caches = getattr(kernel, "device_caches", None)
    if caches is None:
        return None
    try:
        return sum(len(entry[0]) for entry in caches.values())
    except (TypeError, IndexError, AttributeError):
        return None


def timed_launch(kernel: Any, grid: tuple[int, ...], *args: Any, name: str, **kwargs: Any) -> None:
    """Launch ``kernel[grid](*args, **kwargs)`` and record a compilation if one happened.

    Constexpr keyword arguments (upper-case names, by the kernels' convention) name the variant.
    """
    before = _cached_variants(kernel)
    start = time.perf_counter()
    kernel[grid](*args, **kwargs)
    seconds = time.perf_counter() - start
    after = _cached_variants(kernel)
    constants = tuple(sorted((k, str(v)) for k, v in kwargs.items() if k.isupper()))
    if before is not None and after is not None:
        if after > before:
            _record(CompileRecord(name, constants, seconds, interpreted=False))
        return
    key = (name, constants)
    with _lock:
        first = key not in _seen_interpreted
        _seen_interpreted.add(key)
    if first:
        _record(CompileRecord(name, constants, seconds, interpreted=True))


def _record(record: CompileRecord) -> None:
    with _lock:
        _records.append(record)
    what = "first interpreted run of" if record.interpreted else "compiled"
    log.info(
        "ds_kernels: %s %s in %.3f s (%s)",
        what,
        record.kernel,
        record.seconds,
        ", ".join(f"{k}={v}" for k, v in record.constants),
    )
