"""Checkpoints move between ZeRO stages and world sizes through the engine, with no conversion step.

Save after 5 steps at one stage and world size, load into a fresh engine at another, train 5 more: the
result equals 10 uninterrupted single-process steps on the same global batches.
"""

from __future__ import annotations

import engine_workers as w
import pytest
import torch

from ds_comm.testing import run_distributed


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("save_stage", "save_world", "load_stage", "load_world"),
    [(0, 2, 2, 4), (2, 2, 0, 1), (3, 2, 1, 1), (1, 2, 3, 2)],
)
def test_save_at_one_stage_and_world_load_at_another(
    tmp_path, save_stage, save_world, load_stage, load_world
):
    save_dir = str(tmp_path / "ckpt")
    run_distributed(
        w.train_and_save, world_size=save_world, args=(5, save_dir, "sgd", save_stage), timeout=200
    )
    resumed = run_distributed(
        w.load_and_train, world_size=load_world, args=(5, save_dir, "sgd", load_stage), timeout=200
    )
    ref_params, ref_losses, _ = w.reference(10, "sgd")
    for params, losses, steps, _lr in resumed:
        assert steps == 10
        assert losses == pytest.approx(ref_losses, abs=1e-5)
        for got, want in zip(params, ref_params):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
