"""Resumption: 10 straight steps equal 5 steps + save + load in fresh processes + 5 steps, bit for bit."""

from __future__ import annotations

import engine_workers as w
import pytest
import torch

from ds_comm.testing import run_distributed


@pytest.mark.timeout(240)
def test_resume_in_fresh_processes_is_bit_exact(tmp_path) -> None:
    straight = run_distributed(w.train_and_report, world_size=2, args=(10, "adamw"), timeout=200)
    save_dir = str(tmp_path / "ckpt")
    run_distributed(w.train_and_save, world_size=2, args=(5, save_dir, "adamw"), timeout=200)
    assert (tmp_path / "ckpt" / "latest").read_text() == "global_step5"
    resumed = run_distributed(w.load_and_train, world_size=2, args=(5, save_dir, "adamw"), timeout=200)
    for (params_a, losses_a, _norms, lr_a), (params_b, losses_b, steps_b, lr_b) in zip(straight, resumed):
        assert steps_b == 10 and lr_a == lr_b
        assert losses_a == losses_b
        assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
