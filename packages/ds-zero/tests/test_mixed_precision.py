"""Stages 1 and 2 with bf16/fp16 parameters and fp32 masters; overflow agreed across ranks."""

from __future__ import annotations

import pytest
import torch
from _models import global_batches, reference_mixed_precision, tiny_mlp, zero_trainer

import ds_comm
from ds_comm.testing import run_distributed

STEPS, MICRO = 10, 3
# bf16 keeps 8 mantissa bits: gradients summed in a different order differ by ~2^-8 relative, which
# ten Adam steps of lr 1e-2 turn into at most ~1e-2 absolute on the fp32 masters.
BF16_TOLERANCE = {"rtol": 2e-2, "atol": 1e-2}


def _train_mixed(stage: int):
    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    model = tiny_mlp()
    opt = zero_trainer(model, stage, bucket=200, dtype=torch.bfloat16)
    for x, y in global_batches(STEPS, MICRO, world):
        mine = slice(rank * MICRO, (rank + 1) * MICRO)
        opt.backward(torch.nn.functional.mse_loss(model(x[mine].bfloat16()).float(), y[mine]))
        opt.step()
    masters = {}
    for unit, master in zip(opt.masters.units, opt.masters.holders):
        for slot, start, end, off in unit.owned_slices():
            masters[(slot.index, start)] = master.detach()[off : off + end - start].clone()
    return masters, [p.detach().clone() for p in model.parameters()]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stage", [1, 2])
def test_bf16_matches_mixed_precision_reference(stage):
    expected = reference_mixed_precision(STEPS, MICRO, 2, torch.bfloat16)
    results = run_distributed(_train_mixed, world_size=2, args=(stage,))
    pieces: dict[int, torch.Tensor] = {}
    for masters, _ in results:
        for (index, start), values in masters.items():
            flat = pieces.setdefault(index, torch.full((expected[index].numel(),), float("nan")))
            flat[start : start + values.numel()] = values
    for index, want in enumerate(expected):
        got = pieces[index].view(want.shape)
        assert not got.isnan().any()
        torch.testing.assert_close(got, want, **BF16_TOLERANCE)
    for p in results[0][1]:
        assert p.dtype == torch.bfloat16


def _overflow_on_one_rank():
    rank = ds_comm.get_rank()
    model = tiny_mlp()
    opt = zero_trainer(
        model, 2, bucket=200, dtype=torch.float16, fp16_scale=1024.0, optimizer=torch.optim.Adam
    )
    before = [p.detach().clone() for p in model.parameters()]
    out = model(torch.randn(2, 12, dtype=torch.float16)).float().sum()
    opt.backward(out * (float("inf") if rank == 1 else 1.0))  # only rank 1 sees the overflow
    applied = opt.step()
    unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.backward(model(torch.randn(2, 12, dtype=torch.float16)).float().sum())
    second = opt.step()
    return not applied, unchanged, not second, len(opt.optimizer.state)


@pytest.mark.timeout(120)
def test_fp16_overflow_is_agreed_and_skips_the_step():
    for overflow, unchanged, second_overflow, states in run_distributed(_overflow_on_one_rank, world_size=2):
        assert overflow and unchanged
        assert not second_overflow and states > 0  # the next clean step goes through
