"""Algorithmic and bus bandwidth of a collective, as nccl-tests and DeepSpeed's communication logger
define them, in Gbps (10^9 bits per second).

``nbytes`` is the payload :mod:`ds_comm.collectives` logs: the whole tensor for reductions and
broadcasts, the gathered (or scattered-from) whole for all-gather and reduce-scatter. For those two,
DeepSpeed logs one rank's piece and multiplies by the world size before dividing; the rates agree.
"""

from __future__ import annotations

import math

_GATHER_LIKE = {
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_base",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "reduce_scatter_base",
    "all_to_all_single",
    "all_to_all",
}
_ALL_REDUCE = {"all_reduce", "all_reduce_coalesced", "inference_all_reduce"}


def bandwidth_gbps(op: str, nbytes: int, seconds: float, group_size: int) -> tuple[float, float]:
    """``(algbw, busbw)`` in Gbps; zero for a zero duration."""
    if seconds <= 0:
        return 0.0, 0.0
    n = max(group_size, 1)
    rate = nbytes / seconds
    if op in _ALL_REDUCE:
        # Each byte crosses the ring twice (reduce-scatter then all-gather).
        algbw, busbw = 2 * rate, rate * 2 * (n - 1) / n
    elif op in _GATHER_LIKE:
        algbw, busbw = rate, rate * (n - 1) / n
    else:  # point-to-point, broadcast, reduce, gather, scatter, barrier
        algbw = busbw = rate
    return algbw * 8 / 1e9, busbw * 8 / 1e9


def convert_size(size_bytes: int) -> str:
    """``"1.5 KB"`` (powers of 1024), ``"0B"`` for nothing: DeepSpeed's message-size column."""
    if size_bytes <= 0:
        return "0B"
    names = ("B", "KB", "MB", "GB", "TB", "PB")
    i = min(int(math.floor(math.log(size_bytes, 1024))), len(names) - 1)
    return f"{round(size_bytes / 1024**i, 2)} {names[i]}"
