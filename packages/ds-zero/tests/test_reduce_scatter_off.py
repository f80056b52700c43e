"""``reduce_scatter: false`` at stages 1-2: gradients are all-reduced (each rank keeps its chunk), with the
same numbers as reduce-scatter and as single-process PyTorch."""

from __future__ import annotations

import pytest
import torch
from _models import global_batches, reference_run, tiny_mlp

import ds_comm
from ds_comm import comms_log
from ds_comm.testing import run_distributed

STEPS, GAS, MICRO = 4, 2, 2


def _train(stage: int, overlap: bool, reduce_scatter: bool):
    from ds_zero import ReducePolicy, ZeroPolicy, wrap

    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    trainer = wrap(
        model,
        opt,
        policy=ZeroPolicy(
            stage=stage, reduce=ReducePolicy(bucket_numel=200, overlap=overlap, reduce_scatter=reduce_scatter)
        ),
    )
    batches = global_batches(STEPS * GAS, MICRO, world)
    with comms_log.capture() as log:
        for s in range(STEPS):
            for k in range(GAS):
                x, y = batches[s * GAS + k]
                mine = slice(rank * MICRO, (rank + 1) * MICRO)
                trainer.backward(torch.nn.functional.mse_loss(model(x[mine]), y[mine]) / GAS)
            assert trainer.step()
        ops = {r.op for r in log.records()}
    return [p.detach().clone() for p in model.parameters()], sorted(ops)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("stage", "overlap"), [(1, False), (2, True)])
def test_reduce_scatter_false_all_reduces_with_the_same_numbers(stage, overlap):
    expected = reference_run(STEPS, GAS, MICRO, 2, 0.0)
    off = run_distributed(_train, world_size=2, timeout=200, args=(stage, overlap, False))
    on = run_distributed(_train, world_size=2, timeout=200, args=(stage, overlap, True))
    for (params, ops), (params_on, ops_on) in zip(off, on):
        assert not any("reduce_scatter" in op for op in ops), ops
        assert "all_reduce" in ops
        assert any("reduce_scatter" in op for op in ops_on), ops_on
        for got, got_on, want in zip(params, params_on, expected):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got, got_on, rtol=1e-6, atol=1e-6)
