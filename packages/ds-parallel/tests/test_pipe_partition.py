"""Stage boundaries (uniform, balanced) and the 1F1B order, as plain values."""

from __future__ import annotations

import itertools

import pytest

from ds_parallel.pipe.partition import partition_balanced, partition_uniform
from ds_parallel.pipe.schedule import one_f_one_b


def test_uniform_matches_deepspeeds_boundaries() -> None:
    assert partition_uniform(7, 3) == [0, 3, 5, 7]
    assert partition_uniform(8, 4) == [0, 2, 4, 6, 8]
    assert partition_uniform(2, 4) == [0, 1, 2, 2, 2]


def _max_part(weights: list[int], parts: list[int]) -> int:
    return max(sum(weights[a:b]) for a, b in itertools.pairwise(parts))


def _best(weights: list[int], k: int) -> int:
    n = len(weights)
    best = None
    for cuts in itertools.combinations(range(1, n), k - 1):
        parts = [0, *cuts, n]
        cost = _max_part(weights, parts)
        best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize(
    "weights,k",
    [
        ([5, 1, 1, 1, 1, 5], 2),
        ([10, 0, 3, 3, 3, 0, 10], 3),
        ([1] * 9, 4),
        ([0, 4, 0, 4, 0, 4, 0, 4, 0], 4),
        ([7, 2, 9, 1, 1, 8, 3], 3),
        ([0, 1, 1, 0], 2),
    ],
)
def test_balanced_is_optimal_and_gives_every_stage_a_layer(weights: list[int], k: int) -> None:
    parts = partition_balanced(weights, k)
    assert parts[0] == 0 and parts[-1] == len(weights) and len(parts) == k + 1
    assert all(a < b for a, b in itertools.pairwise(parts))
    assert _max_part(weights, parts) == _best(weights, k)


@pytest.mark.parametrize("p,m", [(1, 1), (2, 4), (4, 4), (4, 2), (3, 7)])
def test_one_f_one_b_runs_each_micro_batch_once_and_bounds_in_flight(p: int, m: int) -> None:
    for s in range(p):
        order = one_f_one_b(s, p, m)
        assert [i for k, i in order if k == "F"] == list(range(m))
        assert [i for k, i in order if k == "B"] == list(range(m))
        live = peak = 0
        for kind, i in order:
            live += 1 if kind == "F" else -1
            peak = max(peak, live)
            assert kind == "F" or any(k == "F" and j == i for k, j in order[: order.index((kind, i))])
        assert peak == min(p - s, m)
