"""Communication per step, read from the collective log: stage 2 moves each gradient once through a
reduce-scatter and each parameter once through an all-gather; stage 1 reduces only at the boundary."""

from __future__ import annotations

import pytest
import torch
from _models import tiny_mlp, zero_trainer

import ds_comm
from ds_comm.testing import run_distributed


def _one_step_log(stage: int, gas: int):
    model = tiny_mlp()
    opt = zero_trainer(model, stage, bucket=300, optimizer=torch.optim.Adam)
    padded = sum(u.padded_numel for u in opt.masters.units)
    x = torch.randn(2, 12)
    with ds_comm.comms_log.capture() as log:
        for _ in range(gas):
            opt.backward(model(x).pow(2).mean())
        opt.step()
        summary = log.summary()
    return padded, len(opt.masters.units), summary


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("stage", "gas"), [(2, 1), (1, 3), (2, 3)])
def test_volume_per_step(stage, gas):
    padded, units, summary = run_distributed(_one_step_log, world_size=2, args=(stage, gas))[0]
    # stage 2 reduces every micro-step (full gradients are not kept); stage 1 only at the boundary
    reductions = gas if stage == 2 else 1
    assert summary["reduce_scatter_tensor"]["bytes"] == reductions * padded * 4
    assert summary["reduce_scatter_tensor"]["count"] == reductions * units
    assert summary["all_gather_into_tensor"]["bytes"] == padded * 4
    assert summary["all_gather_into_tensor"]["count"] == units
    # the only other traffic: one scalar all-reduce for the global gradient norm
    assert summary["all_reduce"] == {"count": 1, "bytes": 4, "seconds": summary["all_reduce"]["seconds"]}
    assert set(summary) == {"reduce_scatter_tensor", "all_gather_into_tensor", "all_reduce"}
