"""The elastic batch-size arithmetic (DeepSpeed's elasticity versions 0.1 and 0.2), as pure functions.

Note: [elastic batch] A global batch ``B`` can run on ``w`` data-parallel ranks exactly when some allowed
micro batch ``m`` makes ``w * m`` divide ``B`` (the rest is gradient accumulation). Version 0.1 looks for
the ``B <= max_train_batch_size`` that admits the most world sizes in ``[min_gpus, max_gpus]``. Its
candidates are each micro batch, and their least common multiple, scaled by the largest highly
composite number that keeps them under the cap (highly composite numbers have more divisors than any
smaller number, hence many valid world sizes). Ties go to the larger batch, or the smaller one when
``prefer_larger_batch`` is false. Version 0.2 runs the same search over whole nodes (``num_gpus_per_node``
GPUs, ``model_parallel_size`` of them per model replica) and, when the current world size is not among
the results, falls back to the largest (or smallest) batch that the current world size itself can run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ds_engine.elasticity.errors import ElasticityConfigError, ElasticityError

# The smallest highly composite numbers (OEIS A002182), enough for batches up to 720720 * micro batch.
HCN_LIST: tuple[int, ...] = (
    1,
    2,
    4,
    6,
    12,
    24,
    36,
    48,
    60,
    120,
    180,
    240,
    360,
    720,
    840,
    1260,
    1680,
    2520,
    5040,
    7560,
    10080,
    15120,
    20160,
    25200,
    27720,
    45360,
    50400,
    55440,
    83160,
    110880,
    166320,
    221760,
    277200,
    332640,
    498960,
    554400,
    665280,
    720720,
)


def candidate_batch_sizes(bases: Sequence[int], max_batch: int) -> list[int]:
    """Each base (not above ``max_batch``) times the largest highly composite number that stays under it."""
    out: set[int] = set()
    for base in bases:
        if base > max_batch:
            continue  # scaling only grows a base: it can never come back under the cap
        room = max_batch // base
        out.add(base * max(h for h in HCN_LIST if h <= room))
    return sorted(out)


def valid_world_sizes(batch: int, micro_batches: Sequence[int], min_gpus: int, max_gpus: int) -> list[int]:
    """World sizes in ``[min_gpus, max_gpus]`` that can run ``batch`` (Note [elastic batch])."""
    upper = min(max_gpus, batch // min(micro_batches))
    return [w for w in range(max(1, min_gpus), upper + 1) if any(batch % (w * m) == 0 for m in micro_batches)]


def best_batch(
    candidates: Sequence[int], micro_batches: Sequence[int], min_gpus: int, max_gpus: int, prefer_larger: bool
) -> tuple[int, list[int]]:
    """The candidate admitting the most world sizes (ties: larger or smaller batch), with those sizes."""
    scored = [
        (len(valid := valid_world_sizes(b, micro_batches, min_gpus, max_gpus)), b, valid) for b in candidates
    ]
    if not scored:
        return min(micro_batches), []
    _, batch, valid = max(scored, key=lambda s: (s[0], s[1] if prefer_larger else -s[1]))
    return batch, valid


def compatible_gpus_v01(
    micro_batches: Sequence[int],
    max_batch: int,
    min_gpus: int | None = None,
    max_gpus: int | None = None,
    prefer_larger: bool = True,
) -> tuple[int, list[int]]:
    """Version 0.1: ``(train_batch_size, valid world sizes)``; 0 or None bounds mean 1 and cap/min micro."""
    if any(m > max_batch for m in micro_batches):
        raise ElasticityConfigError(
            f"elasticity: every micro batch size must be <= max_train_batch_size {max_batch} "
            f"(got micro_batch_sizes={list(micro_batches)})"
        )
    low = min_gpus or 1
    high = max_gpus or max_batch // min(micro_batches)
    bases = [*micro_batches, math.lcm(*micro_batches)]
    return best_batch(candidate_batch_sizes(bases, max_batch), micro_batches, low, high, prefer_larger)


def pick_micro_batch(
    batch: int, dp_world_size: int, micro_batches: Sequence[int], prefer_larger: bool
) -> int | None:
    """A micro batch dividing each rank's share: the largest one, or the first listed when not preferring larger."""
    fitting = [m for m in micro_batches if (batch // dp_world_size) % m == 0]
    if not fitting:
        return None
    return max(fitting) if prefer_larger else fitting[0]


def compatible_gpus_v02(
    micro_batches: Sequence[int],
    max_batch: int,
    current_num_gpus: int,
    *,
    min_gpus: int,
    max_gpus: int,
    prefer_larger: bool = True,
    num_gpus_per_node: int = 1,
    model_parallel_size: int = 1,
) -> tuple[int, list[int], int | None]:
    """Version 0.2: ``(train_batch_size, valid data-parallel sizes, micro batch)`` for ``current_num_gpus`` GPUs."""
    if num_gpus_per_node % model_parallel_size:
        raise ElasticityError(
            f"elasticity version 0.2: num_gpus_per_node {num_gpus_per_node} must be divisible by "
            f"model_parallel_size {model_parallel_size}"
        )
    dp_per_node = num_gpus_per_node // model_parallel_size
    node_batch, valid_nodes = compatible_gpus_v01(
        micro_batches,
        int(max_batch / dp_per_node),
        int(min_gpus / num_gpus_per_node),
        int(max_gpus / num_gpus_per_node),
        prefer_larger,
    )
    batch = node_batch * dp_per_node
    valid_dp = [n * dp_per_node for n in valid_nodes]
    current_dp = current_num_gpus // model_parallel_size
    if current_dp in valid_dp:
        return batch, valid_dp, pick_micro_batch(batch, current_dp, micro_batches, prefer_larger)
    # Not an elastic-friendly size: the best batch this exact world can run under the cap.
    if current_num_gpus % model_parallel_size or current_dp < 1:
        raise ElasticityConfigError(
            f"elasticity version 0.2: world size {current_num_gpus} is not a positive multiple "
            f"of model_parallel_size {model_parallel_size}"
        )
    fallbacks = [(max_batch // (m * current_dp)) * m * current_dp for m in micro_batches]
    batch = max(fallbacks) if prefer_larger else min(fallbacks)
    return batch, [current_dp], pick_micro_batch(batch, current_dp, micro_batches, prefer_larger)
