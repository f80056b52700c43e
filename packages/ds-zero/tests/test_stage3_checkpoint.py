"""Stage-3 checkpoints reshard: saved at stage 3 on 2 ranks they load at stage 1 on 1 rank and at
stage 2 on 3 ranks; saved at stage 2 on 3 ranks they load at stage 3 on 2 ranks. Training then goes on
exactly as it would have without the save (same global batches, fp32, to 1e-5). The files are real
(``torch.save``, read back with ``weights_only=True``); ``zero_to_fp32`` consolidates a stage-3 one.

Each rank's optimizer file holds its per-parameter slices (``ds_zero.sharded_state``); rank 0 also
writes the full module state (``full_state_dict``: frozen parameters and buffers), as the engine does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _models import global_batches
from _stage3_models import frozen_mlp, make_optimizer, stage3_policy

import ds_comm
from ds_comm.testing import run_distributed

BEFORE, AFTER, GLOBAL = 3, 2, 6


def _trainer(model, stage: int):
    from ds_zero import ReducePolicy, ZeroPolicy, wrap

    policy = (
        stage3_policy(clip=0.5)
        if stage == 3
        else ZeroPolicy(stage=stage, reduce=ReducePolicy(bucket_numel=200), clip_grad=0.5)
    )
    return wrap(model, make_optimizer(model), policy=policy)


def _train(model, trainer, steps: int, start: int) -> None:
    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    micro = GLOBAL // world
    batches = global_batches(BEFORE + AFTER, GLOBAL, 1)
    for s in range(start, start + steps):
        x, y = batches[s]
        mine = slice(rank * micro, (rank + 1) * micro)
        trainer.backward(torch.nn.functional.mse_loss(model(x[mine]), y[mine]))
        assert trainer.step()


def _full(model, stage: int) -> dict[str, torch.Tensor]:
    from ds_zero.stage3 import full_state_dict

    if stage == 3:
        return full_state_dict(model, rank0_only=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save(model, trainer, stage: int, folder: str) -> None:
    tag = Path(folder, "t")
    tag.mkdir(parents=True, exist_ok=True)
    rank = ds_comm.get_rank()
    torch.save(
        {"optimizer_state_dict": trainer.state_dict()},
        tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
    )
    module = _full(model, stage)
    if rank == 0:
        frozen = [n for n, p in frozen_mlp().named_parameters() if not p.requires_grad]
        torch.save(
            {"module": module, "buffer_names": [], "frozen_param_names": frozen},
            tag / "mp_rank_00_model_states.pt",
        )
    ds_comm.barrier()


def _load(folder: str, stage: int):
    """A fresh model (frozen layer scrambled, so the module file must restore it), wrapped at ``stage``."""
    tag = Path(folder, "t")
    module = torch.load(tag / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    shards = [
        torch.load(p, weights_only=True)["optimizer_state_dict"]
        for p in sorted(tag.glob("zero_pp_rank_*_optim_states.pt"))
    ]
    model = frozen_mlp(seed=7)
    trainer = _trainer(model, stage)
    model.load_state_dict(module)  # at stage 3 this lands in the shards (a load_state_dict pre-hook)
    trainer.load_state_dict(shards)
    return model, trainer


def _save_then_continue(stage: int, folder: str):
    model = frozen_mlp()
    trainer = _trainer(model, stage)
    _train(model, trainer, BEFORE, 0)
    _save(model, trainer, stage, folder)
    _train(model, trainer, AFTER, BEFORE)
    return _full(model, stage)


def _load_then_continue(stage: int, folder: str):
    model, trainer = _load(folder, stage)
    _train(model, trainer, AFTER, BEFORE)
    return _full(model, stage)


def _stage3_both_ways(stage2_folder: str, stage3_folder: str):
    resumed = _load_then_continue(3, stage2_folder)
    return resumed, _save_then_continue(3, stage3_folder)


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.timeout(300)
def test_checkpoints_reshard_across_stages_and_world_sizes(tmp_path):
    from ds_zero.consolidate import get_fp32_state_dict_from_zero_checkpoint

    s2, s3 = str(tmp_path / "s2"), str(tmp_path / "s3")
    stage2_run = run_distributed(_save_then_continue, world_size=3, args=(2, s2))[0]
    stage3_resumed, stage3_run = run_distributed(_stage3_both_ways, world_size=2, args=(s2, s3))[0]
    _assert_same(stage3_resumed, stage2_run)  # stage 2 on 3 ranks -> stage 3 on 2 ranks
    stage1_resumed = run_distributed(_load_then_continue, world_size=1, args=(1, s3))[0]
    _assert_same(stage1_resumed, stage3_run)  # stage 3 on 2 ranks -> stage 1 on 1 rank
    stage2_resumed = run_distributed(_load_then_continue, world_size=3, args=(2, s3))[0]
    _assert_same(stage2_resumed, stage3_run)  # stage 3 on 2 ranks -> stage 2 on 3 ranks
    saved = torch.load(Path(s3, "t", "mp_rank_00_model_states.pt"), weights_only=True)["module"]
    _assert_same(get_fp32_state_dict_from_zero_checkpoint(s3, tag="t"), saved)  # zero_to_fp32
