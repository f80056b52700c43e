"""Sharding batches along the sequence: labels shifted before sharding, every rank's batch served in turn."""

from __future__ import annotations

import pytest
import sp_ranks
import torch

from ds_comm.testing import run_distributed
from ds_parallel.ulysses import shift_and_shard


def test_labels_shift_before_sharding_so_edges_keep_their_targets() -> None:
    ids = torch.arange(8).reshape(1, 8)
    batch = {"input_ids": ids, "labels": ids + 10, "position_ids": ids, "name": "x"}
    first, second = (shift_and_shard(batch, r, 2) for r in (0, 1))
    assert first["shift_labels"].tolist() == [
        [11, 12, 13, 14]
    ]  # token 3 predicts token 4, on the other shard
    assert second["shift_labels"].tolist() == [[15, 16, 17, -100]]
    assert second["input_ids"].tolist() == [[4, 5, 6, 7]] and second["position_ids"].tolist() == [
        [4, 5, 6, 7]
    ]
    assert "labels" not in first and first["name"] == "x"


@pytest.mark.parametrize(
    ("batch", "text"),
    [
        (
            {"input_ids": torch.zeros(1, 7), "position_ids": torch.zeros(1, 7)},
            "sequence length 7 does not split",
        ),
        ({"input_ids": torch.zeros(1, 8)}, "needs position_ids"),
    ],
)
def test_batches_that_cannot_shard_are_refused(batch: dict, text: str) -> None:
    with pytest.raises(ValueError, match=text):
        shift_and_shard(batch, 0, 2)


@pytest.mark.timeout(120)
def test_adapter_serves_each_ranks_batch_to_the_whole_group() -> None:
    results = run_distributed(sp_ranks.adapter_batches, world_size=2, timeout=100)
    for r, batches in enumerate(results):
        assert [b["tag"] for b in batches] == [0, 1]
        for src, b in enumerate(batches):
            tokens = [100 * src + t for t in range(8)]
            assert b["input_ids"] == [tokens[4 * r : 4 * r + 4]]
            assert b["shift_labels"] == [(tokens[1:] + [-100])[4 * r : 4 * r + 4]]
