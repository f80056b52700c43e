"""Pipeline parallelism on gloo ranks equals the same layers as one module (fp32, 1e-5, 10 steps)."""

from __future__ import annotations

import pipe_workers as w
import pytest
import torch

from ds_comm.testing import run_distributed


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "world,tied,ckpt,stage",
    [
        (2, False, 0, 0),
        (2, True, 0, 0),
        (2, True, 2, 0),
        (4, False, 0, 1),
        (4, True, 2, 1),
        (4, True, 0, 0),
        (2, False, -1, 1),  # -1: pipeline.activation_checkpoint_interval 1 from the config
    ],
)
def test_pipeline_equals_one_module(world: int, tied: bool, ckpt: int, stage: int) -> None:
    results = run_distributed(w.train, world_size=world, timeout=200, args=(2, tied, ckpt, stage))
    ref_losses, ref_state = w.reference(tied)
    for r in results:  # 10 training losses, then eval_batch's on the next batch
        assert r["losses"] == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
    seen = set()
    for r in results:
        for name, value in r["state"].items():
            assert torch.allclose(value, ref_state[name], rtol=1e-5, atol=1e-6), name
            seen.add(name)
    assert seen == set(ref_state)
    assert all(r["interval"] == abs(ckpt) for r in results)
    assert [r["first"] for r in results[:: world // 2]] == [True, False]
    assert [r["last"] for r in results[:: world // 2]] == [False, True]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pipeline_trains_in_low_precision(precision: str) -> None:
    """bf16 activations and gradients cross stages; fp16's loss scale is the same on every stage (the
    overflow check reads the whole pipeline's norm), so losses track fp32 within half-precision error."""
    results = run_distributed(w.train_low_precision, world_size=2, timeout=150, args=(precision,))
    ref_losses, _ = w.reference(True)
    ref_losses = ref_losses[: w.STEPS]  # without the eval loss
    assert results[0] == results[1]
    assert results[0] == pytest.approx(ref_losses, rel=3e-2, abs=1e-2)


@pytest.mark.timeout(200)
def test_tied_weights_stay_in_sync_with_fp32_accumulation_at_zero1() -> None:
    """bf16 at ZeRO 1 with grad_accum_dtype fp32: micro-batch gradients accumulate in the reducer's fp32
    buffers, not in p.grad, and the tied weights' sum over their stages must reach those buffers
    (Trainer.accumulated_grad), or the two copies of the tied layer drift apart."""
    results = run_distributed(w.train_low_precision, world_size=2, timeout=150, args=("bf16", 1, "fp32"))
    ref_losses, _ = w.reference(True)
    assert results[0]["losses"] == results[1]["losses"]
    assert results[0]["losses"] == pytest.approx(ref_losses[: w.STEPS], rel=3e-2, abs=1e-2)
    assert len(results[0]["tied"]) == len(results[1]["tied"]) >= 1
    for mine, theirs in zip(results[0]["tied"], results[1]["tied"]):
        assert torch.equal(mine, theirs)


@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    "dynamic,sizes",
    [
        (True, [[2, 3], [3, 1], [1, 4]]),  # shapes change inside a batch: every activation has its header
        (False, [[2, 2], [3, 3], [1, 1]]),  # static within a batch, another size each batch
    ],
)
def test_pipeline_shapes_between_micro_batches_and_batches(dynamic: bool, sizes: list[list[int]]) -> None:
    """Receives are posted from the batch's first activation's shapes (Note [early receives]): a batch
    whose micro-batches differ trains with ``dynamic_shape=True``, and batches of different sizes train
    without it."""
    results = run_distributed(w.varying, world_size=2, timeout=150, args=(sizes, dynamic))
    assert results[0] == results[1]
    assert results[0] == pytest.approx(w.reference_varying(sizes), rel=1e-5, abs=1e-6)
