"""Expert parallelism through the engine equals one process holding every expert (gloo CPU ranks)."""

from __future__ import annotations

import moe_workers as W  # noqa: E402 - rank functions live in an importable module
import pytest
import torch

from ds_comm.testing import run_distributed


def _check(results: list[dict], ref: dict) -> None:
    for rank, res in enumerate(results):
        torch.testing.assert_close(
            torch.tensor(res["losses"]), torch.tensor(ref["losses"][rank]), rtol=0, atol=1e-5
        )
        torch.testing.assert_close(
            torch.tensor(res["aux"]), torch.tensor(ref["aux"][rank]), rtol=0, atol=1e-5
        )
        assert res["weights"].keys() <= ref["weights"].keys()
        for name, w in res["weights"].items():
            torch.testing.assert_close(w, ref["weights"][name], rtol=0, atol=1e-5, msg=f"rank {rank} {name}")
        assert res["norm"] == pytest.approx(ref["norm"], abs=1e-5)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_ep2_on_2_ranks_equals_one_process(stage: int) -> None:
    results = run_distributed(W.train_rank, world_size=2, timeout=200, args=(stage, 2))
    _check(results, W.reference(2))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [0, 1, 2])
def test_ep2_by_dp2_on_4_ranks_equals_one_process(stage: int) -> None:
    results = run_distributed(W.train_rank, world_size=4, timeout=260, args=(stage, 2))
    _check(results, W.reference(4))
