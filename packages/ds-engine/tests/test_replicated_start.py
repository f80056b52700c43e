"""Every rank starts from rank 0's parameters and buffers, whatever each rank built (DeepSpeed's
broadcast at ``initialize``), through shared memory on one host and through c10d with it off."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from ds_comm.testing import run_distributed


def _model(seed: int, stage: int) -> nn.Module:
    torch.manual_seed(seed)
    head_dtype = torch.float64 if stage == 0 else torch.float32  # ZeRO wants one dtype per param group
    model = nn.Sequential(nn.Linear(40, 300), nn.BatchNorm1d(300), nn.Linear(300, 3).to(head_dtype))
    model[1].running_mean.normal_()  # a float buffer, and num_batches_tracked an integer one
    model[1].num_batches_tracked.fill_(seed + 5)
    return model


def _start(shm: str, stage: int):
    os.environ["DS_ZERO_SHM_ALLREDUCE"] = shm
    from ds_engine import initialize  # this package's own entry: its session has no deepspeed meta-package

    rank = torch.distributed.get_rank()
    model = _model(seed=rank, stage=stage)
    config = {"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}}
    config["zero_optimization"] = {"stage": stage}
    engine, *_ = initialize(model=model, model_parameters=model.parameters(), config=config)
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("shm,stage,world", [("1", 0, 2), ("1", 2, 3), ("0", 0, 2)])
def test_every_rank_starts_from_rank0(shm: str, stage: int, world: int) -> None:
    states = run_distributed(_start, world, 150, args=(shm, stage))
    want = _model(seed=0, stage=stage).state_dict()
    for rank, state in enumerate(states):
        assert state.keys() == want.keys()
        for name, value in want.items():
            assert state[name].dtype == value.dtype and torch.equal(state[name], value), (rank, name)
