"""``use_data_before_expert_parallelism`` (a top-level key, applied by the engine: Note [key effects] in
ds_engine.config.effects) orders the expert groups as DeepSpeed does: 4 gloo ranks, ep_size 2."""

from __future__ import annotations

import moe_order_workers as W  # noqa: E402 - rank functions live in an importable module
import pytest

from ds_comm.testing import run_distributed


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("flag", "groups"),
    [
        (None, [[0, 1], [0, 1], [2, 3], [2, 3]]),  # default: experts spread over consecutive ranks
        (True, [[0, 2], [1, 3], [0, 2], [1, 3]]),  # data-parallel ranks first: experts spread with a stride
    ],
)
def test_the_key_orders_the_expert_groups(flag: bool | None, groups: list[list[int]]) -> None:
    results = run_distributed(W.expert_group_ranks, world_size=4, timeout=200, args=(flag,))
    assert [r["ep"] for r in results] == groups
