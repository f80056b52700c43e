"""A pipeline that cannot run ends with an error naming the stage and micro-batch, never a hang."""

from __future__ import annotations

import time

import pipe_workers as w
import pytest

from ds_comm.testing import DistributedTestError, run_distributed

pytestmark = pytest.mark.faults


@pytest.mark.timeout(180)
def test_shape_mismatch_between_stages_names_stage_and_micro_batch() -> None:
    start = time.monotonic()
    with pytest.raises(DistributedTestError, match=r"pipeline stage 1 \(rank 1\), micro-batch 0: forward failed"):
        run_distributed(w.mismatched, world_size=2, timeout=150)
    assert time.monotonic() - start < 120  # the other stage does not wait for a collective timeout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_2_and_3_are_refused_with_pipelines(stage: int) -> None:
    with pytest.raises(DistributedTestError, match=f"'zero_optimization.stage' {stage}: ZeRO-2 and ZeRO-3"):
        run_distributed(w.mismatched, world_size=2, timeout=100, args=(stage,))
