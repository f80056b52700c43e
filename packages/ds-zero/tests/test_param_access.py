"""DeepSpeed's safe_get/set_* accessors on 2 gloo ranks at stages 0-3, against single-process PyTorch."""

from __future__ import annotations

import pytest
import torch
from _models import global_batches, tiny_mlp, zero_trainer
from torch import nn

import ds_comm
from ds_comm.testing import run_distributed

MICRO, WORLD = 2, 2


def _reference() -> dict[str, dict[str, torch.Tensor]]:
    """One AdamW step on the global batch, then the next batch's gradient: what every rank must see."""
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    (x0, y0), (x1, y1) = global_batches(2, MICRO, WORLD)
    nn.functional.mse_loss(model(x0), y0).backward()
    opt.step()
    opt.zero_grad()
    nn.functional.mse_loss(model(x1), y1).backward()
    out: dict[str, dict[str, torch.Tensor]] = {"param": {}, "grad": {}, "exp_avg": {}, "exp_avg_sq": {}}
    for name, p in model.named_parameters():
        out["param"][name] = p.detach().clone()
        out["grad"][name] = p.grad.detach().clone()
        out["exp_avg"][name] = opt.state[p]["exp_avg"].clone()
        out["exp_avg_sq"][name] = opt.state[p]["exp_avg_sq"].clone()
    return out


def _trainer(model: nn.Module, stage: int):
    if stage < 3:
        return zero_trainer(model, stage, bucket=200)  # several flat units: parameters straddle shards
    from _stage3_models import make_optimizer, stage3_policy

    from ds_zero import wrap

    # weights in shard units, biases under the persistence threshold: both stage-3 layouts are read
    return wrap(model, make_optimizer(model), policy=stage3_policy(cap=300, persist=30))


def _full_value(p: torch.Tensor) -> torch.Tensor:
    from ds_zero.stage3.shards import gather_full

    return gather_full(p).detach().float().clone()


def _access(stage: int):
    from ds_zero import param_access as pa

    rank = ds_comm.get_rank()
    model = tiny_mlp()
    trainer = _trainer(model, stage)
    (x0, y0), (x1, y1) = global_batches(2, MICRO, WORLD)
    mine = slice(rank * MICRO, (rank + 1) * MICRO)
    trainer.backward(nn.functional.mse_loss(model(x0[mine]), y0[mine]))
    assert trainer.step()
    trainer.backward(nn.functional.mse_loss(model(x1[mine]), y1[mine]))  # gradients valid until the step

    named = list(trainer.module.named_parameters())
    got: dict[str, dict[str, torch.Tensor]] = {"param": {}, "grad": {}, "exp_avg": {}, "exp_avg_sq": {}}
    for name, p in named:  # collective: same parameters in the same order on every rank
        got["param"][name] = pa.safe_get_full_fp32_param(p)
        got["grad"][name] = pa.safe_get_full_grad(p)
        got["exp_avg"][name] = pa.safe_get_full_optimizer_state(p, "exp_avg")
        got["exp_avg_sq"][name] = pa.safe_get_full_optimizer_state(p, "exp_avg_sq")

    local = {}
    if stage == 3:
        for name, p in named:
            local[name] = (
                pa.safe_get_local_fp32_param(p).clone(),
                pa.safe_get_local_optimizer_state(p, "exp_avg").clone(),
            )
        weight = dict(named)["2.weight"]
        local["grad"] = pa.safe_get_local_grad(weight).clone()
    else:
        with pytest.raises(ValueError, match="ZeRO-3"):
            pa.safe_get_local_fp32_param(named[0][1])

    overflow_before = trainer.check_overflow()
    name0, p0 = named[0]
    pa.safe_set_full_grad(p0, torch.full_like(got["grad"][name0], float("nan")))
    overflow_after = trainer.check_overflow()
    trainer.zero_grad()

    # a new full fp32 value reaches the model once the masters are published
    new = {name: got["param"][name] + 1.0 for name, _ in named}
    for name, p in named:
        pa.safe_set_full_fp32_param(p, new[name])
    trainer.masters.publish()
    model_after = {name: _full_value(p) for name, p in named}
    master_after = {name: pa.safe_get_full_fp32_param(p) for name, p in named}
    return got, local, (overflow_before, overflow_after), new, model_after, master_after


@pytest.mark.timeout(240)
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_full_accessors_match_single_process(stage):
    ref = _reference()
    results = run_distributed(_access, world_size=WORLD, args=(stage,), timeout=200)
    for rank, (got, local, overflow, new, model_after, master_after) in enumerate(results):
        for kind in ("param", "grad", "exp_avg", "exp_avg_sq"):
            assert set(got[kind]) == set(ref[kind])
            for name, want in ref[kind].items():
                torch.testing.assert_close(
                    got[kind][name].cpu(),
                    want,
                    rtol=1e-5,
                    atol=1e-6,
                    msg=lambda m, r=rank, k=kind, n=name: f"rank {r} {k} {n}: {m}",
                )
        assert overflow == (False, True)
        for name, value in new.items():
            torch.testing.assert_close(model_after[name].cpu(), value.cpu())
            torch.testing.assert_close(master_after[name].cpu(), value.cpu())
        if stage == 3:
            _check_local_partitions(rank, local, ref)


def _check_local_partitions(rank: int, local: dict, ref: dict) -> None:
    """Each rank's local partitions, put together, are the full values."""
    from ds_zero.stage3.shards import flat_range

    for name, (param_part, exp_avg_part) in ((k, v) for k, v in local.items() if k != "grad"):
        full = ref["param"][name].reshape(-1)
        if name.endswith("weight"):  # unit-sharded: this rank's rows
            start, end = flat_range(ref["param"][name].shape, WORLD, rank)
            torch.testing.assert_close(param_part.cpu(), full[start:end], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                exp_avg_part.cpu(), ref["exp_avg"][name].reshape(-1)[start:end], rtol=1e-5, atol=1e-6
            )
        else:
            assert param_part.numel() <= full.numel()
    start, end = flat_range(ref["grad"]["2.weight"].shape, WORLD, rank)
    torch.testing.assert_close(
        local["grad"].cpu(), ref["grad"]["2.weight"].reshape(-1)[start:end], rtol=1e-5, atol=1e-6
    )


def test_unmanaged_parameter():
    from ds_zero import param_access as pa

    p = nn.Parameter(torch.ones(3))
    assert pa.safe_get_full_fp32_param(p) is None and pa.safe_get_full_optimizer_state(p, "exp_avg") is None
    with pytest.raises(ValueError, match="not trained by a ZeRO optimizer"):
        pa.safe_set_full_fp32_param(p, torch.zeros(3))
