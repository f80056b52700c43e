"""The engine on 2 and 4 real gloo ranks equals single-process PyTorch on the same global batch.

fp32, 10 optimizer steps of 16 samples (accumulating 4 micro-batches per rank on 2 ranks, 2 on 4 ranks),
gradient clipping active on some steps and not on others, an LR schedule, bucketed all-reduce over several buckets. The optimizer is SGD with
momentum: linear in the gradient, so a wrong average (a sum, a missing rank) cannot hide behind the
scale invariance of Adam or behind clipping.
"""

from __future__ import annotations

import engine_workers as w
import pytest
import torch

from ds_comm.testing import run_distributed

STEPS = 10


@pytest.mark.timeout(240)
@pytest.mark.parametrize("world", [2, 4])
def test_matches_single_process_reference(world: int) -> None:
    results = run_distributed(w.train_and_report, world_size=world, args=(STEPS, "sgd"), timeout=200)
    ref_params, ref_losses, ref_norms = w.reference(STEPS, "sgd")
    clip = w.CLIP["sgd"]
    assert any(n > clip for n in ref_norms) and any(n < clip for n in ref_norms), ref_norms
    for params, losses, norms, _lr in results:
        assert losses == pytest.approx(ref_losses, abs=1e-5)
        assert norms == pytest.approx(ref_norms, rel=1e-5)
        for got, want in zip(params, ref_params):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for params, *_ in results[1:]:  # replicas stay bit-identical
        assert all(torch.equal(a, b) for a, b in zip(params, results[0][0]))
