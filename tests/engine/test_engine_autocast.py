"""The ``torch_autocast`` section on 2 gloo ranks (Note [torch autocast] in ds_engine.autocast): fp32
weights, forward under ``torch.autocast``, Linear parameters tagged with the autocast dtype, fp16 with a
GradScaler-like loss scale, and training equal to a single-process ``torch.autocast`` reference."""

from __future__ import annotations

import pytest
import torch

from ds_comm.testing import run_distributed

GLOBAL, STEPS = 8, 4


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 32), torch.nn.LayerNorm(32), torch.nn.GELU(), torch.nn.Linear(32, 3)
    )


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(GLOBAL, 6, generator=gen), torch.randint(0, 3, (GLOBAL,), generator=gen)


def _config(stage: int, dtype: str) -> dict:
    return {
        "train_batch_size": GLOBAL,
        "train_micro_batch_size_per_gpu": GLOBAL // 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": stage},
        "torch_autocast": {"enabled": True, "dtype": dtype},
    }


def _train(stage: int, dtype: str) -> dict:
    import deepspeed
    from deepspeed.runtime.torch_autocast import get_comm_dtype, has_comm_dtype

    engine, *_ = deepspeed.initialize(model=_model(), config=_config(stage, dtype))
    rank = deepspeed.comm.get_rank()
    half = slice(rank * GLOBAL // 2, (rank + 1) * GLOBAL // 2)
    losses, out_dtypes = [], set()
    for step in range(STEPS):
        x, y = _batch(step)
        out = engine(x[half])
        out_dtypes.add(out.dtype)
        loss = torch.nn.functional.cross_entropy(out.float(), y[half])
        engine.backward(loss)
        engine.step()
        total = loss.detach().clone()
        deepspeed.comm.all_reduce(total)
        losses.append(total.item() / 2)
    tags = {name: (has_comm_dtype(p), get_comm_dtype(p)) for name, p in engine.module.named_parameters()}
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        params = [p.detach().clone() for p in engine.module.parameters()]
    return {
        "losses": losses,
        "out_dtypes": out_dtypes,
        "tags": tags,
        "params": params,
        "param_dtypes": {p.dtype for p in engine.module.parameters()},
        "scale": engine.optimizer.cur_scale,
    }


def _reference(dtype: torch.dtype) -> tuple[list[float], list[torch.Tensor]]:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for step in range(STEPS):
        x, y = _batch(step)
        with torch.autocast("cpu", dtype=dtype):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, [p.detach() for p in model.parameters()]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_bf16_autocast_keeps_fp32_weights_and_matches_torch_autocast(stage: int) -> None:
    results = run_distributed(_train, world_size=2, args=(stage, "torch.bfloat16"), timeout=200)
    ref_losses, ref_params = _reference(torch.bfloat16)
    for result in results:
        assert result["out_dtypes"] == {torch.bfloat16}  # the last Linear ran under autocast
        assert result["param_dtypes"] == {torch.float32}  # weights stay fp32: no master copies
        assert result["tags"]["0.weight"] == (True, torch.bfloat16) and result["tags"]["3.bias"][0]
        assert result["tags"]["1.weight"][0] is False  # LayerNorm is not lower-precision safe by default
        assert result["losses"] == pytest.approx(ref_losses, rel=2e-2)
        for got, want in zip(result["params"], ref_params):
            torch.testing.assert_close(got, want, rtol=0, atol=2e-2)
        assert result["scale"] == 1.0


@pytest.mark.timeout(240)
def test_fp16_autocast_scales_the_loss() -> None:
    for result in run_distributed(_train, world_size=2, args=(0, "fp16"), timeout=200):
        assert result["out_dtypes"] == {torch.float16} and result["param_dtypes"] == {torch.float32}
        assert result["scale"] == 2.0**16  # torch.amp.GradScaler's start, no overflow in 4 steps
        assert all(torch.isfinite(torch.tensor(result["losses"])))


def test_engine_without_the_section_turns_an_outer_autocast_off() -> None:
    import deepspeed

    engine, *_ = deepspeed.initialize(
        model=_model(),
        dist_init_required=False,
        config={"train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}},
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert engine(torch.randn(2, 6)).dtype == torch.float32
        assert engine.module(torch.randn(2, 6)).dtype == torch.bfloat16  # the plain module follows autocast
