"""Stage 0 composed by ``ds_zero.wrap`` in one process: the step sequence, mixed precision, state.

No process group is needed in a single process (ds_comm reports world size 1), so the reducer is idle
and these tests check the step itself against plain PyTorch.
"""

from __future__ import annotations

import io

import pytest
import torch

from ds_zero import LossScalePolicy, MixedPrecisionPolicy, StageNotAvailable, ZeroPolicy, wrap
from ds_zero.policy import OffloadPolicy


def _model(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)


def _data(n: int, seed: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 6, generator=gen), torch.randn(4, 3, generator=gen)) for _ in range(n)]


def test_fp32_step_equals_torch_with_accumulation_and_clipping() -> None:
    ref, mine = _model(), _model()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    trainer = wrap(mine, torch.optim.AdamW(mine.parameters(), lr=1e-2), policy=ZeroPolicy(clip_grad=0.3))
    data = _data(12)
    for step in range(6):
        norms = []
        for x, y in data[2 * step : 2 * step + 2]:
            torch.nn.functional.mse_loss(ref(x), y).div(2).backward()
            trainer.backward(torch.nn.functional.mse_loss(mine(x), y).div(2))
        norms.append(torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.3))
        ref_opt.step()
        ref_opt.zero_grad()
        assert trainer.step() is True
        assert trainer.get_global_grad_norm() == pytest.approx(float(norms[-1]), rel=1e-6)
    for a, b in zip(ref.parameters(), mine.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert b.grad is None


@pytest.mark.faults
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_fp32_non_finite_gradients_skip_the_step(poison: float) -> None:
    """Note [non-finite gradients]: fp32 with no loss scale skips too (the default policy checks)."""
    model = _model()
    trainer = wrap(model, torch.optim.AdamW(model.parameters(), lr=0.1), policy=ZeroPolicy(clip_grad=1.0))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _data(1)[0]
    trainer.backward(torch.nn.functional.mse_loss(model(x), y) * poison)
    assert trainer.step() is False and trainer.overflow
    assert trainer.optimizer.state == {} or all(not s for s in trainer.optimizer.state.values())
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b) and p.grad is None
    trainer.backward(torch.nn.functional.mse_loss(model(x), y))
    assert trainer.step() is True and not trainer.overflow


@pytest.mark.faults
def test_the_check_can_be_turned_off_explicitly() -> None:
    """bf16's ``check_grad_overflow: false`` maps to ``check_overflow=False``: then NaN reaches the weights."""
    model = _model()
    trainer = wrap(
        model, torch.optim.SGD(model.parameters(), lr=0.1), policy=ZeroPolicy(check_overflow=False)
    )
    x, y = _data(1)[0]
    trainer.backward(torch.nn.functional.mse_loss(model(x), y) * float("nan"))
    assert trainer.step() is True
    assert not all(torch.isfinite(p).all() for p in model.parameters())


def test_fp16_overflow_skips_the_step_and_keeps_weights() -> None:
    model = _model()
    trainer = wrap(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        policy=ZeroPolicy(
            mixed_precision=MixedPrecisionPolicy(param_dtype=torch.float16),
            loss_scale=LossScalePolicy(initial_scale=2.0**10, hysteresis=1),
            check_overflow=True,
        ),
    )
    assert all(p.dtype == torch.float16 for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _data(1)[0]
    trainer.backward(torch.nn.functional.mse_loss(model(x.half()).float(), y) * float("inf"))
    assert trainer.step() is False and trainer.overflow
    assert trainer.cur_scale == 2.0**9
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b) and p.grad is None
    trainer.backward(torch.nn.functional.mse_loss(model(x.half()).float(), y))
    assert trainer.step() is True and not trainer.overflow
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_masters_keep_the_fp32_start_exactly() -> None:
    fp32 = _model()
    reference = [p.detach().clone() for p in fp32.parameters()]
    trainer = wrap(
        fp32,
        torch.optim.AdamW(fp32.parameters()),
        policy=ZeroPolicy(mixed_precision=MixedPrecisionPolicy(param_dtype=torch.bfloat16)),
    )
    masters = [p for g in trainer.param_groups for p in g["params"]]
    assert all(m.dtype == torch.float32 for m in masters)
    for m, r in zip(masters, reference):
        assert torch.equal(m, r)  # taken before the cast: no precision lost at start
    assert all(p.dtype == torch.bfloat16 for p in fp32.parameters())


def test_bf16_gradients_accumulate_in_fp32_masters() -> None:
    model = _model(dtype=torch.float32)
    trainer = wrap(
        model,
        torch.optim.SGD(model.parameters(), lr=0.0),
        policy=ZeroPolicy(mixed_precision=MixedPrecisionPolicy(param_dtype=torch.bfloat16)),
    )
    x, y = _data(1)[0]
    for _ in range(3):
        trainer.backward(torch.nn.functional.mse_loss(model(x.bfloat16()).float(), y))
        assert all(p.grad is None for p in model.parameters())  # released into the fp32 master at once
    masters = [p for g in trainer.param_groups for p in g["params"]]
    assert all(m.grad is not None and m.grad.dtype == torch.float32 for m in masters)


def test_mixed_precision_state_round_trip() -> None:
    def make() -> tuple[torch.nn.Module, object]:
        model = _model()
        return model, wrap(
            model,
            torch.optim.AdamW(model.parameters(), lr=1e-2),
            policy=ZeroPolicy(
                mixed_precision=MixedPrecisionPolicy(param_dtype=torch.float16),
                loss_scale=LossScalePolicy(initial_scale=2.0**8),
                check_overflow=True,
            ),
        )

    model_a, a = make()
    data = _data(6)
    for x, y in data[:3]:
        a.backward(torch.nn.functional.mse_loss(model_a(x.half()).float(), y))
        a.step()
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)  # as a checkpoint would: a copy, readable with weights_only=True
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert set(state) >= {"format", "slices", "loss_scaler"}
    model_b, b = make()
    model_b.load_state_dict(model_a.state_dict())
    b.load_state_dict(state)
    for x, y in data[3:]:
        for model, trainer in ((model_a, a), (model_b, b)):
            trainer.backward(torch.nn.functional.mse_loss(model(x.half()).float(), y))
            trainer.step()
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p, q)


def test_state_is_whole_parameter_slices() -> None:
    model = _model()
    trainer = wrap(model, torch.optim.AdamW(model.parameters()), policy=ZeroPolicy())
    x, y = _data(1)[0]
    trainer.backward(torch.nn.functional.mse_loss(model(x), y))
    trainer.step()
    state = trainer.state_dict()
    assert state["zero_stage"] == 0 and state["partition_count"] == 1
    by_key = {s["key"]: s for s in state["slices"]}
    assert set(by_key) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        piece = by_key[name]
        assert (piece["start"], piece["end"]) == (0, p.numel()) and torch.equal(
            piece["fp32"], p.detach().reshape(-1)
        )
        assert set(piece["state"]) == {"exp_avg", "exp_avg_sq"}


def test_unknown_stage_and_offload_at_stage0_are_refused() -> None:
    model = _model()
    with pytest.raises(StageNotAvailable, match="stage 7"):
        wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), policy=ZeroPolicy(stage=7))
    with pytest.raises(StageNotAvailable, match="offload"):
        wrap(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            policy=ZeroPolicy(offload=OffloadPolicy(optimizer_device="cpu")),
        )


def test_optimizer_parameters_outside_the_model_are_refused() -> None:
    model = _model()
    stray = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="not part of the model"):
        wrap(model, torch.optim.SGD([*model.parameters(), stray], lr=0.1), policy=ZeroPolicy())
