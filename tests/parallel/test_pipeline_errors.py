"""A pipeline that cannot run ends with an error naming the stage and micro-batch, never a hang."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pipe_workers as w
import pytest

from ds_comm.testing import DistributedTestError, free_port, run_distributed

pytestmark = pytest.mark.faults


@pytest.mark.timeout(180)
def test_shape_mismatch_between_stages_names_stage_and_micro_batch() -> None:
    start = time.monotonic()
    with pytest.raises(
        DistributedTestError, match=r"pipeline stage 1 \(rank 1\), micro-batch 0: forward failed"
    ):
        run_distributed(w.mismatched, world_size=2, timeout=150)
    assert time.monotonic() - start < 120  # the other stage does not wait for a collective timeout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_2_and_3_are_refused_with_pipelines(stage: int) -> None:
    with pytest.raises(DistributedTestError, match=f"'zero_optimization.stage' {stage}: ZeRO-2 and ZeRO-3"):
        run_distributed(w.mismatched, world_size=2, timeout=100, args=(stage,))


@pytest.mark.timeout(150)
def test_shape_mismatch_ends_the_launched_job(tmp_path: Path) -> None:
    """Under the real launcher every rank ends: stage 1 names the mismatch, stage 0 (waiting for its
    gradient) fails on the closed connection naming its own stage, and the job exits non-zero."""
    launcher = Path(sys.executable).parent / "deepspeed"
    if not launcher.exists():
        pytest.skip("the deepspeed console script is not installed")
    script = Path(__file__).parent / "scripts" / "pipe_mismatch.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    start = time.monotonic()
    proc = subprocess.run(
        [str(launcher), "--num_gpus", "2", "--master_port", str(free_port()), str(script)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=140,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        "pipeline stage 1 (rank 1), micro-batch 0: forward failed: mat1 and mat2 shapes cannot be multiplied"
        in out
    )
    assert time.monotonic() - start < 120


@pytest.mark.timeout(180)
def test_static_shapes_changing_inside_a_batch_name_stage_and_micro_batch() -> None:
    """Without ``dynamic_shape`` the next stage sizes its receives from the batch's first activation, so
    a micro-batch of another shape fails on the sending stage, naming it and the way out."""
    start = time.monotonic()
    with pytest.raises(
        DistributedTestError,
        match=r"pipeline stage 0 \(rank 0\), micro-batch 1: forward failed: its output \[\(3, 16\) float32\] "
        r"differs from this batch's first micro-batch's \[\(2, 16\) float32\], which sized the next "
        r"stage's receives; pass PipelineModule\(dynamic_shape=True\)",
    ):
        run_distributed(w.varying, world_size=2, timeout=150, args=([[2, 3]], False))
    assert time.monotonic() - start < 120
