"""--bind_core_list parsing and each rank's share of cores."""

from __future__ import annotations

import os

import pytest

from ds_launch.cores import cores_for_rank, parse_range_list, resolve_core_list
from ds_launch.errors import LaunchError


def test_parse_range_list():
    assert parse_range_list("1,3-5,7") == [1, 3, 4, 5, 7]
    assert parse_range_list("0") == [0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,a", "'a' is not a core number or a range"),
        ("1-", "'1-' is not a core number or a range"),
        ("5-3", "range '5-3' ends before it starts"),
        ("0,0", "'0' overlaps or is not in ascending order"),
        ("4,1-2", "'1-2' overlaps or is not in ascending order"),
        ("1, 2", "' 2' is not a core number"),
        ("", "'' is not a core number"),
    ],
)
def test_bad_core_lists(text, message):
    with pytest.raises(LaunchError) as err:
        parse_range_list(text)
    assert message in str(err.value) and "--bind_core_list" in str(err.value)


def test_shares_are_contiguous_and_equal():
    cores = [0, 1, 2, 3, 4, 5, 6]
    assert [cores_for_rank(cores, num_local_procs=3, local_rank=r) for r in range(3)] == [
        [0, 1],
        [2, 3],
        [4, 5],
    ]
    with pytest.raises(LaunchError, match="cannot give each of 3 ranks"):
        cores_for_rank([0, 1], num_local_procs=3, local_rank=0)


def test_resolve_checks_against_the_affinity_mask():
    allowed = sorted(os.sched_getaffinity(0))
    assert resolve_core_list(None) == allowed
    assert resolve_core_list(str(allowed[0])) == [allowed[0]]
    with pytest.raises(LaunchError, match="core 4096 is not available here"):
        resolve_core_list("4096")
