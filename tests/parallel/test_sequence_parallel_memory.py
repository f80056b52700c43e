"""Activation memory per rank with sequence parallelism: about 1/sp of the whole sequence's.

Counted neutrally: the distinct storages autograd saves for backward in one forward and loss of the
tiny Llama (``ds_parallel.memory.saved_activation_bytes``), on each rank's shard against the whole
sequence in one process."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import sp_workers  # noqa: E402

from ds_comm.testing import run_distributed  # noqa: E402

SEQ = 256


@pytest.mark.timeout(200)
@pytest.mark.parametrize("sp", [2, 4])
def test_activation_bytes_per_rank_fall_to_one_over_sp(sp: int) -> None:
    whole = sp_workers.activation_bytes(SEQ, 1)
    per_rank = run_distributed(sp_workers.activation_bytes, world_size=sp, timeout=150, args=(SEQ, sp))
    # sp 4 > 2 KV heads: each rank holds a repeated copy of one KV head, a little over 1/sp
    for got in per_rank:
        assert 0.9 / sp < got / whole < 1.25 / sp, (got, whole)
