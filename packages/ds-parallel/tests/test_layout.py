"""Mesh arithmetic with plain values: which ranks form each group (no process group)."""

from __future__ import annotations

import pytest

from ds_parallel.layout import MeshError, MeshLayout, parse_axes


def test_sequence_groups_are_consecutive_and_data_groups_strided() -> None:
    layout = MeshLayout.from_world(8, sequence=4)
    assert layout.sizes == {"pipeline": 1, "data": 2, "sequence": 4, "tensor": 1}
    assert layout.groups(("sequence",)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert layout.groups(("data",)) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.groups(("data", "sequence")) == [list(range(8))]
    assert layout.coords(6) == {"pipeline": 0, "data": 1, "sequence": 2, "tensor": 0}
    assert layout.rank_in(("sequence",), 6) == 2 and layout.rank_in(("data",), 6) == 1


def test_room_for_tensor_and_pipeline_axes() -> None:
    layout = MeshLayout.from_world(16, sequence=2, tensor=2, pipeline=2)
    assert layout.sizes["data"] == 2
    assert layout.groups(("tensor",))[0] == [0, 1]
    assert layout.groups(("sequence",))[0] == [0, 2]
    # ZeRO's sequence+data group: ranks that share tensor and pipeline coordinates
    assert layout.group_of(("data", "sequence"), 5) == [1, 3, 5, 7]
    for rank in range(16):
        assert layout.rank_of(layout.coords(rank)) == rank


@pytest.mark.parametrize(
    ("world", "sizes", "text"),
    [
        (6, {"sequence": 4}, "world size 6 is not divisible by sequence_parallel_size 4"),
        (4, {"sequence": 0}, "sequence parallel size must be a positive integer"),
        (4, {"expert": 2}, "expert parallelism"),
    ],
)
def test_sizes_that_do_not_fit_are_refused(world: int, sizes: dict, text: str) -> None:
    with pytest.raises(MeshError, match=text):
        MeshLayout.from_world(world, **sizes)


def test_axis_names() -> None:
    assert parse_axes("sequence+data") == ("data", "sequence")
    with pytest.raises(MeshError, match="unknown mesh axis"):
        parse_axes("seq")
