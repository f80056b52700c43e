"""A run saved with sequence parallelism resumes without it and the other way round (2 gloo ranks).

Both directions continue exactly as a single-process run on the same global batches would: the
weights, the SGD momentum and the step counters come back, whatever the sequence-parallel size."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

import sp_workers  # noqa: E402

from ds_comm.testing import run_distributed  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize(("sp_save", "sp_load"), [(2, 1), (1, 2)])
def test_resume_across_sequence_parallel_sizes(
    tmp_path: Path, stage: int, sp_save: int, sp_load: int
) -> None:
    results = run_distributed(
        sp_workers.save_then_resume, world_size=2, timeout=240, args=(stage, sp_save, sp_load, str(tmp_path))
    )
    dp_save, dp_load = 2 // sp_save, 2 // sp_load
    ref_losses, ref_params = sp_workers.reference(6, [dp_save] * 3 + [dp_load] * 3)
    for phase, steps in (("save", range(3)), ("load", range(3, 6))):
        for i, step in enumerate(steps):
            mean = sum(r[phase][i] for r in results) / len(results)
            assert abs(mean - ref_losses[step]) < 1e-5, (phase, step)
    for r in results:
        for name, value in ref_params.items():
            assert (r["params"][name] - value).abs().max().item() < 1e-5, name
