"""A ZeRO-3 engine built without an optimizer (TRL's reference model) is still sharded and gathers in forward.

``deepspeed.initialize(model=model, config=<stage 3>)``, then ``model.eval()`` and forward under
``torch.no_grad()``: the output must equal the unsharded model's (fp32 exactly, bf16 within one rounding),
each rank must hold about half of the parameter bytes on 2 ranks, before and after forward, and
``GatheredParameters`` must give the full weights. Models built under ``zero.Init`` too.
"""

from __future__ import annotations

import pytest
import torch

from ds_comm.testing import run_distributed

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32),
        torch.nn.GELU(),
        torch.nn.Linear(32, 32),
        torch.nn.GELU(),
        torch.nn.Linear(32, 4),
    )


def _config(precision: str) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 2,
        "bf16": {"enabled": precision == "bf16"},
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_prefetch_bucket_size": 600,
            "reduce_bucket_size": 600,
        },
    }


def _param_bytes(module: torch.nn.Module) -> int:
    """Bytes of parameter storage this rank holds (a DTensor counts its local shard)."""
    total = 0
    for p in module.parameters():
        local = getattr(p, "_local_tensor", p)
        total += local.untyped_storage().nbytes()
    return total


def _inference_rank(precision: str, zero_init: bool):
    import deepspeed

    dtype = _DTYPES[precision]
    torch.manual_seed(0)
    reference = _model().to(dtype)
    full_bytes = sum(p.numel() * p.element_size() for p in reference.parameters())
    cfg = _config(precision)
    torch.manual_seed(0)
    if zero_init:
        with deepspeed.zero.Init(config_dict_or_path=cfg):
            model = _model()
    else:
        model = _model()
    engine, optimizer, _, _ = deepspeed.initialize(model=model, config=cfg)
    engine.eval()
    before = _param_bytes(engine.module)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        out = engine(x)
        again = engine(x)
        expected = reference(x)
    after = _param_bytes(engine.module)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        gathered = {name: p.detach().to(dtype).clone() for name, p in engine.module.named_parameters()}
    full = engine._zero3_consolidated_16bit_state_dict()
    return {
        "optimizer": optimizer,
        "out": out,
        "again": again,
        "expected": expected,
        "before": before,
        "after": after,
        "full_bytes": full_bytes,
        "gathered": gathered,
        "reference": reference.state_dict(),
        "consolidated": full,
    }


@pytest.mark.timeout(240)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("zero_init", [False, True], ids=["plain", "zero_init"])
def test_inference_only_zero3_engine_is_sharded_and_exact(precision, zero_init):
    results = run_distributed(_inference_rank, world_size=2, timeout=200, args=(precision, zero_init))
    for rank, r in enumerate(results):
        assert r["optimizer"] is None
        if precision == "fp32":
            assert torch.equal(r["out"], r["expected"]), rank
        else:
            assert r["out"].dtype == torch.bfloat16
            torch.testing.assert_close(r["out"], r["expected"], rtol=1.6e-2, atol=1e-2)
        assert torch.equal(r["again"], r["out"])
        # ~1/2 of the parameter bytes per rank (uneven rows round up), before and after forward
        for held in (r["before"], r["after"]):
            assert held <= 0.56 * r["full_bytes"], (rank, held, r["full_bytes"])
        assert r["gathered"].keys() == r["reference"].keys()
        for name, value in r["reference"].items():
            assert torch.equal(r["gathered"][name], value), name
    consolidated = results[0]["consolidated"]
    assert results[1]["consolidated"] is None
    assert all(torch.equal(consolidated[k], v) for k, v in results[0]["reference"].items())
