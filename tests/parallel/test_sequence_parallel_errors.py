"""Sequence-parallel setups that cannot run fail with a clear error before any compute, on every rank."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import sp_workers  # noqa: E402

from ds_comm.testing import run_distributed  # noqa: E402

pytestmark = pytest.mark.faults  # misuse, injected for real


@pytest.mark.timeout(180)
def test_setup_errors_on_2_ranks() -> None:
    for errors in run_distributed(sp_workers.setup_errors, world_size=2, timeout=150, args=(2,)):
        assert "attention head count 6 is not divisible by sequence_parallel_size 4" in errors["heads"]
        assert "key/value head count 6 is not divisible by sequence_parallel_size 4" in errors["kv_heads"]
        assert "world size 2 is not divisible by sequence_parallel_size 3" in errors["world"]
        assert errors["world"].startswith("DeepSpeedConfigError")
        assert "seq_length 15 does not split over sequence_parallel_size 2" in errors["seq_register"]
        assert "sequence length 15 does not split over sequence_parallel_size 2" in errors["seq_shard"]
        assert "'eager' cannot be wrapped" in errors["eager"]
