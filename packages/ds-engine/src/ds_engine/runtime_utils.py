"""Helpers clients import from ``deepspeed.runtime.utils``: memory reports, moving nested tensors,
no-op decorator and context.

The gradient-norm helpers of the same DeepSpeed module (``clip_grad_norm_``, ``get_global_norm``)
live with the other gradient arithmetic, in :mod:`ds_zero.grad_clip`.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from ds_engine.log import print_dist

_GB = 1024**3
F = TypeVar("F")


def noop_decorator(func: F) -> F:
    """A decorator that returns ``func`` unchanged (where an optional decorator is switched off)."""
    return func


class noop_context:  # noqa: N801 - DeepSpeed's name
    """A context manager that does nothing."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _host_memory() -> tuple[float, float]:
    """(used GB, used percent) of the host's memory, from ``/proc/meminfo`` (sysconf elsewhere)."""
    try:
        info: dict[str, int] = {}
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, value = line.split(":", 1)
                info[key] = int(value.split()[0]) * 1024
        total, available = info["MemTotal"], info.get("MemAvailable", info["MemFree"])
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        total, available = page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    used = total - available
    return round(used / _GB, 2), round(100.0 * used / total, 1)


def memory_usage_report(message: str) -> str:
    """``message`` followed by the accelerator's allocated / peak / reserved memory and the host's use."""
    from ds_accel import get_accelerator

    acc = get_accelerator()
    used_gb, percent = _host_memory()
    return (
        f"{message}\n"
        f"MA {round(acc.memory_allocated() / _GB, 2)} GB         Max_MA {round(acc.max_memory_allocated() / _GB, 2)} GB"
        f"         CA {round(acc.memory_reserved() / _GB, 2)} GB         Max_CA {round(acc.max_memory_reserved() / _GB)} GB \n"
        f"CPU Virtual Memory:  used = {used_gb} GB, percent = {percent}%"
    )


def see_memory_usage(message: str, force: bool = False) -> None:
    """Print ``message`` and the memory in use, on rank 0 only, when ``force`` is true (DeepSpeed's
    switch: calls left in code cost nothing unless forced). Resets the peak counters afterwards, so the
    next report's peaks cover only what happened in between."""
    if not force:
        return
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    gc.collect()  # Python frees unreachable tensors lazily; count only what is really held
    print_dist(memory_usage_report(message), ranks=[0])
    from ds_accel import get_accelerator

    get_accelerator().reset_peak_memory_stats()


def move_to_device(item: Any, device: Any, criterion_func: Callable[[Any], bool] | None = None) -> Any:
    """``item`` with every tensor, also inside (nested) lists, tuples and dicts, on ``device``.

    Without ``criterion_func`` each tensor is copied with ``.to(device)``. With it, only tensors it
    accepts are moved, and those in place: their storage changes (``t.data = ...``), so references
    held elsewhere (a parameter in a module) see the new device; other values are returned as they are.
    """
    if isinstance(item, list):
        return [move_to_device(v, device, criterion_func) for v in item]
    if isinstance(item, tuple):
        return tuple(move_to_device(v, device, criterion_func) for v in item)
    if isinstance(item, dict):
        return {k: move_to_device(v, device, criterion_func) for k, v in item.items()}
    if not torch.is_tensor(item):
        return item
    if criterion_func is None:
        return item.to(device)
    if criterion_func(item):
        item.data = item.data.to(device)
    return item


def copy_to_device(item: Any, device: Any, criterion_func: Callable[[Any], bool]) -> Any:
    """A copy of ``item`` in which the tensors ``criterion_func`` accepts are on ``device`` (nested too)."""
    if torch.is_tensor(item):
        return item.to(device) if criterion_func(item) else item
    if isinstance(item, list):
        return [copy_to_device(v, device, criterion_func) for v in item]
    if isinstance(item, tuple):
        return tuple(copy_to_device(v, device, criterion_func) for v in item)
    if isinstance(item, dict):
        return {k: copy_to_device(v, device, criterion_func) for k, v in item.items()}
    return item


def empty_cache() -> None:
    """Release the accelerator's cached memory and reset its peak counters."""
    from ds_accel import get_accelerator

    get_accelerator().empty_cache()
    get_accelerator().reset_peak_memory_stats()


def set_random_seed(seed: int) -> None:
    """Seed Python's, NumPy's (when installed) and torch's generators (DeepSpeed's ``runtime.utils`` helper)."""
    import random

    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:  # numpy is optional here
        pass
    torch.manual_seed(seed)
