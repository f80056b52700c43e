"""Every DeepSpeed schedule against its formula, written out independently here, step by step."""

from __future__ import annotations

import math

import pytest
import torch

from ds_engine.lr_schedules import (
    VALID_LR_SCHEDULES,
    LRRangeTest,
    OneCycle,
    WarmupCosineLR,
    WarmupDecayLR,
    WarmupLR,
)


def _opt(lr: float = 0.1, groups: int = 1, cls=torch.optim.SGD, **kw) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))]} for _ in range(groups)]
    return cls(params, lr=lr, **kw)


def _trajectory(sched, steps: int) -> list[float]:
    lrs = [sched.optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        sched.step()
        lrs.append(sched.optimizer.param_groups[0]["lr"])
    return lrs


def test_valid_names() -> None:
    assert VALID_LR_SCHEDULES == ["LRRangeTest", "OneCycle", "WarmupLR", "WarmupDecayLR", "WarmupCosineLR"]


@pytest.mark.parametrize("warmup_type", ["log", "linear"])
def test_warmup_lr(warmup_type: str) -> None:
    lo, hi, warm = 0.001, 0.01, 5
    sched = WarmupLR(
        _opt(), warmup_min_lr=lo, warmup_max_lr=hi, warmup_num_steps=warm, warmup_type=warmup_type
    )

    def formula(n: int) -> float:  # n = index of the last step taken, -1 before the first
        if n < 0:
            return lo
        if n < warm:
            gamma = math.log(n + 1) / math.log(warm) if warmup_type == "log" else n / warm
        else:
            gamma = 1.0
        return lo + (hi - lo) * gamma

    assert _trajectory(sched, 9) == pytest.approx([formula(n) for n in range(-1, 9)], rel=1e-12)


def test_warmup_lr_defaults_to_the_optimizer_lr_and_two_steps_minimum() -> None:
    sched = WarmupLR(_opt(lr=0.5), warmup_num_steps=1, warmup_type="linear")
    assert sched.warmup_num_steps == 2
    assert _trajectory(sched, 3) == pytest.approx([0.0, 0.0, 0.25, 0.5])  # W = 2: n / 2 * 0.5, then hold


def test_warmup_decay_lr() -> None:
    lo, hi, warm, total = 0.0, 0.02, 4, 10
    sched = WarmupDecayLR(
        _opt(),
        total_num_steps=total,
        warmup_min_lr=lo,
        warmup_max_lr=hi,
        warmup_num_steps=warm,
        warmup_type="linear",
    )

    def formula(n: int) -> float:
        if n < 0:
            return lo
        gamma = n / warm if n < warm else max(0.0, (total - n) / max(1.0, total - warm))
        return lo + (hi - lo) * gamma

    assert _trajectory(sched, 13) == pytest.approx([formula(n) for n in range(-1, 13)], rel=1e-12)


@pytest.mark.parametrize("warmup_type", ["log", "linear"])
def test_warmup_cosine_lr(warmup_type: str) -> None:
    base, warm, total, min_ratio, cos_min = 0.3, 3, 12, 0.1, 0.01
    sched = WarmupCosineLR(
        _opt(lr=base),
        total_num_steps=total,
        warmup_min_ratio=min_ratio,
        warmup_num_steps=warm,
        cos_min_ratio=cos_min,
        warmup_type=warmup_type,
    )

    def formula(n: int) -> float:
        if n < 0:
            return 0.0
        if n < warm:
            r = math.log(n + 1) / math.log(warm) if warmup_type == "log" else n / warm
            return base * (min_ratio + r * (1 - min_ratio))
        progress = min(1.0, (n - warm + 1) / max(1, total - warm))
        return base * max(0.0, cos_min + (1 - cos_min) * (1 + math.cos(math.pi * progress)) / 2)

    assert _trajectory(sched, 15) == pytest.approx([formula(n) for n in range(-1, 15)], rel=1e-12)


@pytest.mark.parametrize("staircase", [False, True])
def test_lr_range_test(staircase: bool) -> None:
    lo, size, rate = 0.001, 3, 2.0
    sched = LRRangeTest(
        _opt(),
        lr_range_test_min_lr=lo,
        lr_range_test_step_size=size,
        lr_range_test_step_rate=rate,
        lr_range_test_staircase=staircase,
    )

    def formula(n: int) -> float:
        interval = (n + 1) / size
        if staircase:
            interval = math.floor(interval)
        return lo * (1 + rate * interval)

    expected = [lo] + [formula(n) for n in range(0, 10)]
    assert _trajectory(sched, 10) == pytest.approx(expected, rel=1e-12)


def test_one_cycle_lr_and_momentum() -> None:
    lo, hi, first, second, decay_rate, decay_size = 0.01, 0.1, 4, 6, 0.5, 2
    mom_lo, mom_hi = 0.85, 0.95
    opt = _opt(cls=torch.optim.AdamW)
    sched = OneCycle(
        opt,
        cycle_min_lr=lo,
        cycle_max_lr=hi,
        cycle_first_step_size=first,
        cycle_second_step_size=second,
        decay_lr_rate=decay_rate,
        decay_step_size=decay_size,
        cycle_min_mom=mom_lo,
        cycle_max_mom=mom_hi,
    )
    total = first + second

    def scale(n: int) -> float:
        b = n + 1
        x = 1.0 + b / total - math.floor(1 + b / total)
        ratio = first / total
        return x / ratio if x <= ratio else (x - 1) / (ratio - 1)

    def lr(n: int) -> float:
        if n < total:
            return lo + (hi - lo) * scale(n)
        return lo / (1 + decay_rate * (n - total + 1) / decay_size)

    def mom(n: int) -> float:
        return mom_hi - (mom_hi - mom_lo) * scale(n) if n < total else mom_hi

    assert opt.param_groups[0]["lr"] == lo and opt.param_groups[0]["betas"] == (mom_lo, 0.99)
    for n in range(16):
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(lr(n), rel=1e-12), n
        assert opt.param_groups[0]["betas"][0] == pytest.approx(mom(n), rel=1e-12), n


def test_one_cycle_staircase_holds_flat_stairs() -> None:
    sched = OneCycle(
        _opt(),
        cycle_min_lr=0.0,
        cycle_max_lr=1.0,
        cycle_first_step_size=4,
        cycle_first_stair_count=2,
        cycle_momentum=False,
    )
    lrs = _trajectory(sched, 8)[1:]
    # 4 up-steps in 2 stairs, 4 down-steps in 2 stairs: positions floor(offset * 2 / 4) / 2
    assert lrs == pytest.approx([0.0, 0.5, 0.5, 1.0, 0.5, 0.5, 0.0, 0.0])


def test_per_group_values_and_state_round_trip() -> None:
    opt = _opt(groups=2)
    sched = WarmupLR(
        opt, warmup_min_lr=[0.0, 0.1], warmup_max_lr=[1.0, 0.2], warmup_num_steps=4, warmup_type="linear"
    )
    for _ in range(3):
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.15])
    other = WarmupLR(
        _opt(groups=2),
        warmup_min_lr=[0.0, 0.1],
        warmup_max_lr=[1.0, 0.2],
        warmup_num_steps=4,
        warmup_type="linear",
    )
    other.load_state_dict(sched.state_dict())
    sched.step()
    other.step()
    assert [g["lr"] for g in other.optimizer.param_groups] == [g["lr"] for g in opt.param_groups]
    with pytest.raises(ValueError, match="expected 2 values"):
        WarmupLR(opt, warmup_min_lr=[0.0, 0.1, 0.2])


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="warmup_num_steps"):
        WarmupLR(_opt(), warmup_num_steps=0)
    with pytest.raises(ValueError, match="lr_range_test_step_size"):
        LRRangeTest(_opt(), lr_range_test_step_size=0)
    with pytest.raises(ValueError, match="cycle_first_step_size"):
        OneCycle(_opt(), cycle_min_lr=0.1, cycle_max_lr=1.0, cycle_first_step_size=0)
    with pytest.raises(TypeError, match="not a torch.optim.Optimizer"):
        WarmupLR(object())
