"""Batch reconciliation: any two of the three numbers give the third; bad arithmetic is shown."""

from __future__ import annotations

import pytest

from ds_engine.config import DeepSpeedConfigError, reconcile_batch


@pytest.mark.parametrize(
    ("given", "world", "expected"),
    [
        ((32, 4, 2), 4, (32, 4, 2)),
        ((32, 4, None), 4, (32, 4, 2)),
        ((32, None, 2), 4, (32, 4, 2)),
        ((None, 4, 2), 4, (32, 4, 2)),
        ((32, None, None), 4, (32, 8, 1)),
        ((None, 4, None), 4, (16, 4, 1)),
        ((6, None, None), 1, (6, 6, 1)),
    ],
)
def test_derivations(given, world, expected) -> None:
    tb, mb, gas = given
    out = reconcile_batch(
        train_batch_size=tb, micro_batch_per_gpu=mb, gradient_accumulation_steps=gas, dp_world_size=world
    )
    assert (out.train_batch_size, out.micro_batch_per_gpu, out.gradient_accumulation_steps) == expected
    assert out.train_batch_size == out.micro_batch_per_gpu * out.gradient_accumulation_steps * world


@pytest.mark.parametrize(
    ("given", "world", "message"),
    [
        ((32, 4, 3), 4, "32 != 4 * 3 * 4 = 48"),
        ((30, 4, None), 4, "train_batch_size 30 / (micro 4 * world_size 4) does not divide evenly"),
        ((30, None, 4), 4, "train_batch_size 30 / (accumulation 4 * world_size 4) does not divide evenly"),
        ((10, None, None), 4, "train_batch_size 10 / world_size 4 does not divide evenly"),
        ((None, None, 4), 4, "either 'train_batch_size' or 'train_micro_batch_size_per_gpu' must be given"),
        ((0, 4, None), 4, "'train_batch_size' must be a positive integer (got 0)"),
        ((8, 2.5, None), 4, "'train_micro_batch_size_per_gpu' must be a positive integer"),
    ],
)
def test_errors_show_the_arithmetic(given, world, message) -> None:
    tb, mb, gas = given
    with pytest.raises(DeepSpeedConfigError) as info:
        reconcile_batch(
            train_batch_size=tb, micro_batch_per_gpu=mb, gradient_accumulation_steps=gas, dp_world_size=world
        )
    assert message in str(info.value)
