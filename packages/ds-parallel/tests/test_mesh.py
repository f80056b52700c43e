"""The mesh's process groups on real gloo ranks, as DeepSpeed's groups getters and the Ulysses mpu report them."""

from __future__ import annotations

import pytest
import sp_ranks

from ds_comm.testing import run_distributed


@pytest.mark.timeout(120)
def test_sp2_dp2_groups_on_4_ranks() -> None:
    results = run_distributed(sp_ranks.mesh_answers, world_size=4, timeout=100, args=(2,))
    for rank, out in enumerate(results):
        assert out["before"] == (1, 4)  # no mesh yet: the world is one data-parallel group
        seq = [0, 1] if rank < 2 else [2, 3]
        data = [rank % 2, rank % 2 + 2]
        assert out["ranks"] == {"sequence": seq, "data": data, "sequence+data": [0, 1, 2, 3]}
        assert (
            out["sum:sequence"] == sum(seq) and out["sum:data"] == sum(data) and out["sum:sequence+data"] == 6
        )
        assert out["sizes"] == (2, 2, 4, rank % 2, rank // 2)
