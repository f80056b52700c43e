"""Core lists for ``--bind_cores_to_rank`` / ``--bind_core_list``.

A core list is comma-separated numbers and inclusive ranges in ascending order, e.g. ``1,3-5,7``.
Each local rank gets an equal, contiguous share of the list, and ``OMP_NUM_THREADS`` is set to the
share's size so intra-op thread pools match the cores a rank may run on.
"""

from __future__ import annotations

import os

from ds_launch.errors import LaunchError


def parse_range_list(text: str, *, flag: str = "--bind_core_list") -> list[int]:
    """Parse ``"0,2-4,6"`` into ``[0, 2, 3, 4, 6]``; sub-ranges must ascend and not overlap."""
    cores: list[int] = []
    for item in text.split(","):
        low_text, dash, high_text = item.partition("-")
        if not low_text.isdigit() or (dash and not high_text.isdigit()):
            raise LaunchError(f"{flag} {text!r}: {item!r} is not a core number or a range like 3-5")
        low = int(low_text)
        high = int(high_text) if dash else low
        if high < low:
            raise LaunchError(f"{flag} {text!r}: range {item!r} ends before it starts")
        if cores and low <= cores[-1]:
            raise LaunchError(f"{flag} {text!r}: {item!r} overlaps or is not in ascending order")
        cores.extend(range(low, high + 1))
    return cores


def available_cores() -> list[int]:
    """Cores this process may run on (its affinity mask), so container CPU limits are honoured."""
    return sorted(os.sched_getaffinity(0))


def resolve_core_list(bind_core_list: str | None) -> list[int]:
    """The cores to share out among local ranks: the given list, checked against what is allowed."""
    allowed = available_cores()
    if bind_core_list is None:
        return allowed
    cores = parse_range_list(bind_core_list)
    missing = [core for core in cores if core not in allowed]
    if missing:
        raise LaunchError(
            f"--bind_core_list {bind_core_list!r}: core {missing[0]} is not available here "
            f"(allowed: {','.join(str(c) for c in allowed)})"
        )
    return cores


def default_threads_per_rank(num_local_procs: int, cores: int | None = None) -> int:
    """Intra-op threads for each of ``num_local_procs`` ranks of a node that set no ``OMP_NUM_THREADS``.

    Note: [threads per rank] Left alone, every rank's torch starts one thread per core of the node, so N
    ranks run N times as many compute threads as there are cores and spend their time preempting each
    other (torchrun sets 1 for the same reason). An equal share of the cores keeps them all busy without
    oversubscription. ``OMP_NUM_THREADS`` in the environment, or ``--bind_cores_to_rank``, always wins."""
    total = len(available_cores()) if cores is None else cores
    return max(1, total // max(1, num_local_procs))


def cores_for_rank(cores: list[int], *, num_local_procs: int, local_rank: int) -> list[int]:
    """The contiguous share of ``cores`` for ``local_rank`` out of ``num_local_procs`` ranks."""
    per_rank = len(cores) // num_local_procs
    if per_rank < 1:
        raise LaunchError(
            f"--bind_cores_to_rank: {len(cores)} core(s) cannot give each of {num_local_procs} ranks "
            "at least one core"
        )
    return cores[per_rank * local_rank : per_rank * (local_rank + 1)]
