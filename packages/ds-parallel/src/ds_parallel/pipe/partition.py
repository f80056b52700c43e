"""How layers are split into stages: pure arithmetic over per-layer weights (no process group).

A partition is DeepSpeed's ``parts`` list: ``num_stages + 1`` boundaries, stage ``s`` holding layers
``parts[s] <= i < parts[s + 1]``.
"""

from __future__ import annotations


def partition_uniform(num_items: int, num_parts: int) -> list[int]:
    """Equal counts, the first ``num_items % num_parts`` parts one larger (DeepSpeed's boundaries)."""
    if num_items <= num_parts:
        return [min(p, num_items) for p in range(num_parts + 1)]
    chunk, extra = divmod(num_items, num_parts)
    parts = [0]
    for p in range(num_parts):
        parts.append(parts[-1] + chunk + (1 if p < extra else 0))
    return parts


def _fits(weights: list[int], num_parts: int, cap: int) -> bool:
    parts, total = 1, 0
    for w in weights:
        if w > cap:
            return False
        if total + w > cap:
            parts, total = parts + 1, w
        else:
            total += w
    return parts <= num_parts


def partition_balanced(weights: list[int], num_parts: int) -> list[int]:
    """Contiguous parts whose largest weight sum is as small as possible (the linear partition problem).

    The smallest feasible cap is found by bisection; layers are then packed greedily from the back, so
    earlier stages (which also hold the most in-flight activations under 1F1B) get the lighter remainder,
    and every part is non-empty whenever there are at least as many layers as parts."""
    n = len(weights)
    if n <= num_parts:
        return partition_uniform(n, num_parts)
    lo, hi = max(weights), sum(weights)
    while lo < hi:
        mid = (lo + hi) // 2
        if _fits(weights, num_parts, mid):
            hi = mid
        else:
            lo = mid + 1
    bounds = [n]
    total = 0
    for i in range(n - 1, -1, -1):
        parts_left = num_parts - len(bounds)  # parts still to open before this one
        if (
            (total + weights[i] > lo or i + 1 <= parts_left)
            and total > 0
            and parts_left > 0
            and i + 1 < bounds[-1]
        ):
            bounds.append(i + 1)
            total = 0
        total += weights[i]
    while len(bounds) < num_parts + 1:
        bounds.append(0)
    bounds.reverse()
    bounds[0] = 0
    return bounds
