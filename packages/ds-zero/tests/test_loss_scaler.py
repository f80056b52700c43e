"""The dynamic loss scaler follows DeepSpeed's rule: hysteresis, window growth, floor."""

from __future__ import annotations

import pytest

from ds_zero.loss_scaler import DynamicLossScaler, LossScaleError, StaticLossScaler, make_loss_scaler
from ds_zero.policy import LossScalePolicy


def _scales(scaler: DynamicLossScaler, overflows: list[bool]) -> list[float]:
    out = []
    for overflow in overflows:
        scaler.update(overflow)
        out.append(scaler.cur_scale)
    return out


def test_hysteresis_delays_the_first_halving() -> None:
    scaler = DynamicLossScaler(LossScalePolicy(initial_scale=1024, hysteresis=2, window=1000))
    # first overflow spends the hysteresis budget, the second halves, the third halves again
    assert _scales(scaler, [True, True, True]) == [1024, 512, 256]


def test_no_hysteresis_halves_at_once_and_respects_the_floor() -> None:
    scaler = DynamicLossScaler(LossScalePolicy(initial_scale=8, hysteresis=1, min_scale=2, window=1000))
    assert _scales(scaler, [True, True]) == [4, 2]
    with pytest.raises(LossScaleError, match="minimum"):
        scaler.update(True)


def test_floor_without_raising_stays_at_minimum() -> None:
    scaler = DynamicLossScaler(
        LossScalePolicy(initial_scale=4, hysteresis=1, min_scale=2, raise_at_min_scale=False)
    )
    assert _scales(scaler, [True, True, True]) == [2, 2, 2]


def test_window_of_clean_steps_doubles_and_refills_hysteresis() -> None:
    scaler = DynamicLossScaler(LossScalePolicy(initial_scale=16, hysteresis=2, window=3))
    # overflow at iteration 0 (budget 2 -> 1, scale kept); clean iterations 1..3: stable interval reaches 3
    # at iteration 4 (cur_iter - last_overflow - 1 == 3), where the scale doubles and the budget refills.
    assert _scales(scaler, [True, False, False, False, False]) == [16, 16, 16, 16, 32]
    assert scaler.cur_hysteresis == 2
    # with the budget refilled, the next overflow does not halve
    assert _scales(scaler, [True]) == [32]


def test_consecutive_hysteresis_refills_on_every_clean_step() -> None:
    scaler = DynamicLossScaler(LossScalePolicy(initial_scale=64, hysteresis=2, consecutive_hysteresis=True))
    assert _scales(scaler, [True, False, True, False, True]) == [64, 64, 64, 64, 64]
    plain = DynamicLossScaler(LossScalePolicy(initial_scale=64, hysteresis=2, consecutive_hysteresis=False))
    assert _scales(plain, [True, False, True, False, True]) == [64, 64, 32, 32, 16]


def test_state_round_trip_continues_identically() -> None:
    a = DynamicLossScaler(LossScalePolicy(initial_scale=256, hysteresis=2, window=2))
    _scales(a, [True, False, True])
    b = DynamicLossScaler(LossScalePolicy(initial_scale=1, hysteresis=2, window=2))
    b.load_state_dict(a.state_dict())
    pattern = [False, False, False, True, True, False]
    assert _scales(a, pattern) == _scales(b, pattern)


def test_static_and_absent_policies() -> None:
    assert make_loss_scaler(None).cur_scale == 1.0
    static = make_loss_scaler(LossScalePolicy(dynamic=False, static_scale=128))
    assert isinstance(static, StaticLossScaler) and not static.dynamic
    static.update(True)
    assert static.cur_scale == 128
