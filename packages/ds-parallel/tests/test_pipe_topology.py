"""DeepSpeed's pipeline topologies: rank orders, axis groups, checkpoint names (pure arithmetic)."""

from __future__ import annotations

import pytest

from ds_parallel.pipe.topology import PipeDataParallelTopology, PipeModelDataParallelTopology, ProcessTopology


def test_pipe_data_order_puts_replicas_of_a_stage_next_to_each_other() -> None:
    topo = PipeDataParallelTopology(num_pp=2, num_dp=2)
    assert topo.get_axis_names() == ["pipe", "data"]
    assert [topo.get_coord(r) for r in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert topo.get_rank(pipe=1, data=0) == 2
    assert topo.get_axis_comm_lists("pipe") == [[0, 2], [1, 3]]
    assert topo.get_axis_comm_lists("data") == [[0, 1], [2, 3]]
    assert topo.get_axis_list("pipe", 1) == [2, 3]
    assert topo.filter_match(data=1) == [1, 3]
    assert topo.get_dim("model") == 0 and topo.world_size() == 4


def test_pipe_model_data_order_and_rank_repr() -> None:
    topo = PipeModelDataParallelTopology(num_pp=2, num_mp=2, num_dp=3)
    assert topo.get_axis_names() == ["pipe", "data", "model"]
    assert topo.get_dim("data") == 3 and topo.get_dim("model") == 2
    assert topo.get_rank(pipe=0, data=1, model=0) == 2  # model varies fastest
    assert topo.get_axis_comm_lists("model")[0] == [0, 1]
    assert topo.get_rank_repr(rank=3) == "model_01"
    assert PipeDataParallelTopology(2, 2).get_rank_repr(rank=3) == ""


def test_bad_coordinates_are_refused() -> None:
    topo = ProcessTopology(axes=["a", "b"], dims=[2, 3])
    with pytest.raises(ValueError):
        topo.get_rank(a=0)
    with pytest.raises(ValueError):
        topo.get_rank(a=2, b=0)
    with pytest.raises(ValueError):
        ProcessTopology(axes=["a", "a"], dims=[1, 1])
