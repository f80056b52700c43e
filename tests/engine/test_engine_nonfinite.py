"""Non-finite gradients and training calls out of order, injected for real on 2 gloo ranks.

Note [non-finite gradients] (ds_zero.trainer) and Note [call order] (ds_engine.step_guard): a NaN or
Inf loss on one rank skips the step on every rank at every stage and precision, leaving the run
bit-identical to one that never saw that batch; a run that keeps skipping stops with an error; and
``step()`` without ``backward()`` or a second ``backward()`` at a boundary are errors naming the call.
"""

from __future__ import annotations

import nonfinite_workers as w
import pytest
import torch

from ds_comm.testing import run_distributed

pytestmark = pytest.mark.faults


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_a_poisoned_step_is_skipped_everywhere_and_leaves_no_trace(stage: int) -> None:
    results = run_distributed(w.poisoned_and_clean, world_size=2, args=(stage,), timeout=280)
    for rank, cases in enumerate(results):
        for (precision, poison), (poisoned, clean, warnings) in cases.items():
            case = f"stage {stage} {precision} {poison} rank {rank}"
            assert poisoned["skipped"] == 1 and clean["skipped"] == 0, case
            assert poisoned["global_steps"] == w.STEPS, case
            assert poisoned["lr"] == clean["lr"], case  # the schedule did not move on the skipped step
            for got, want in zip(poisoned["params"], clean["params"]):
                assert torch.isfinite(got).all(), case
                assert torch.equal(got, want), case
            if rank == 0 and precision != "fp16":  # fp16's loss scaler logs its own overflows
                assert len(warnings) == 1 and f"step {w.BAD + 1} skipped" in warnings[0], (case, warnings)
            if rank == 1:
                assert warnings == [], case  # logged once, by rank 0


@pytest.mark.timeout(200)
@pytest.mark.parametrize("stage", [0, 3])
def test_a_run_that_keeps_skipping_stops(stage: int) -> None:
    for result in run_distributed(w.keeps_skipping, world_size=2, args=(stage,), timeout=180):
        assert result["error"] is not None and "max_consecutive_skipped_steps=3" in result["error"]
        assert result["at_step"] == 2  # the third skip in a row
        assert result["unchanged"]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_training_calls_out_of_order_are_errors(stage: int) -> None:
    for result in run_distributed(w.call_order, world_size=2, args=(stage,), timeout=180):
        assert "engine.step() was called without engine.backward()" in result["step_without_backward"]
        assert result["unchanged"]
        assert "engine.backward() was called twice" in result["backward_twice"]
        assert result["global_steps"] == 2
