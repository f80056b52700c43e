"""The Ulysses all-to-all, DistributedAttention and the sequence-parallel loss on 2 gloo ranks."""

from __future__ import annotations

import pytest
import sp_ranks

from ds_comm.testing import run_distributed


@pytest.mark.timeout(120)
def test_all_to_all_layout_and_its_backward() -> None:
    for out in run_distributed(sp_ranks.all_to_all_layout, world_size=2, timeout=100):
        assert out == {"heads_ok": True, "back_ok": True, "grad_ok": True}


@pytest.mark.timeout(120)
def test_distributed_attention_equals_whole_sequence_attention() -> None:
    for out in run_distributed(sp_ranks.distributed_attention, world_size=2, timeout=100):
        assert max(out.values()) < 1e-6, out


@pytest.mark.timeout(120)
def test_sequence_parallel_loss_weights_shards_by_valid_tokens() -> None:
    for out in run_distributed(sp_ranks.sp_loss, world_size=2, timeout=100):
        assert max(out.values()) < 1e-6, out
