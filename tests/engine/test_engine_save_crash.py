"""A rank killed in the middle of a save: the previous checkpoint and `latest` still load, and the
surviving rank fails within the rendezvous timeout instead of hanging."""

from __future__ import annotations

import os
import signal

import engine_workers as w
import pytest

import deepspeed
from ds_comm.testing import DistributedTestError, run_distributed

pytestmark = pytest.mark.faults

STAGE = 2


def _crash_during_second_save(save_dir: str) -> None:
    import ds_engine.checkpoint.files as files

    world = deepspeed.comm.get_world_size()
    cfg = w.config(world, "adamw", STAGE, checkpoint={"rendezvous_timeout": 10})
    engine, *_ = deepspeed.initialize(model=w.make_model(), config=cfg)
    engine.load_checkpoint(save_dir)
    w._train(engine, 1, world)
    if deepspeed.comm.get_rank() == 1:
        real_replace = os.replace

        def die_before_rename(src: str, dst: str) -> None:
            if dst.endswith("_optim_states.pt"):
                os.kill(os.getpid(), signal.SIGKILL)  # the file is written, not yet in place
            real_replace(src, dst)

        files.os.replace = die_before_rename
    engine.save_checkpoint(save_dir, client_state={"losses": []})


@pytest.mark.timeout(300)
def test_killed_rank_mid_save_leaves_previous_checkpoint(tmp_path):
    save_dir = str(tmp_path / "ckpt")
    first = run_distributed(w.train_and_save, world_size=2, args=(2, save_dir, "adamw", STAGE))[0]
    with pytest.raises(DistributedTestError, match=r"rank 1 exited with code -9|rank 0 failed"):
        run_distributed(_crash_during_second_save, world_size=2, args=(save_dir,), timeout=120)
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "global_step2"
    crashed = tmp_path / "ckpt" / "global_step3"
    assert not (crashed / "zero_pp_rank_1_mp_rank_00_optim_states.pt").exists()

    # Fresh processes resume from the previous checkpoint and train on as if nothing happened.
    resumed = run_distributed(w.load_and_train, world_size=2, args=(2, save_dir, "adamw", STAGE))[0]
    straight = run_distributed(
        w.train_and_save, world_size=2, args=(4, str(tmp_path / "straight"), "adamw", STAGE)
    )[0]
    params, losses, global_steps, _ = resumed
    assert global_steps == 4
    assert losses[:2] == first
    assert losses == pytest.approx(straight, rel=1e-6)
