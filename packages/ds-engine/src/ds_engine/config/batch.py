"""Batch-size reconciliation: ``train_batch_size = micro_batch_per_gpu * accumulation * dp_world_size``."""

from __future__ import annotations

from dataclasses import dataclass

from ds_engine.config.errors import DeepSpeedConfigError


@dataclass(frozen=True)
class BatchSizes:
    """The three batch numbers after reconciliation; they always satisfy the identity above."""

    train_batch_size: int
    micro_batch_per_gpu: int
    gradient_accumulation_steps: int
    dp_world_size: int


def _exact(numerator: int, denominator: int, what: str, arithmetic: str) -> int:
    if denominator <= 0 or numerator % denominator:
        raise DeepSpeedConfigError(f"{what} cannot be derived: {arithmetic} does not divide evenly")
    return numerator // denominator


def reconcile_batch(
    *,
    train_batch_size: int | None,
    micro_batch_per_gpu: int | None,
    gradient_accumulation_steps: int | None,
    dp_world_size: int,
) -> BatchSizes:
    """Derive the missing batch numbers from the given ones; any two determine the third.

    With only ``train_batch_size`` or only the micro batch given, accumulation is 1. Inconsistent or
    non-divisible values raise :class:`DeepSpeedConfigError` showing the arithmetic.
    """
    tb, mb, gas, world = train_batch_size, micro_batch_per_gpu, gradient_accumulation_steps, dp_world_size
    for key, value in (
        ("train_batch_size", tb),
        ("train_micro_batch_size_per_gpu", mb),
        ("gradient_accumulation_steps", gas),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise DeepSpeedConfigError(f"'{key}' must be a positive integer (got {value!r})")
    if world <= 0:
        raise DeepSpeedConfigError(f"data-parallel world size must be positive (got {world})")
    if tb is None and mb is None:
        raise DeepSpeedConfigError(
            "either 'train_batch_size' or 'train_micro_batch_size_per_gpu' must be given "
            f"(got gradient_accumulation_steps={gas!r})"
        )
    if tb is not None and mb is not None and gas is not None:
        if tb != mb * gas * world:
            raise DeepSpeedConfigError(
                "inconsistent batch sizes: train_batch_size must equal train_micro_batch_size_per_gpu * "
                f"gradient_accumulation_steps * world_size, but {tb} != {mb} * {gas} * {world} = {mb * gas * world}"
            )
    elif tb is not None and mb is not None:
        gas = _exact(
            tb,
            mb * world,
            "gradient_accumulation_steps",
            f"train_batch_size {tb} / (micro {mb} * world_size {world})",
        )
    elif tb is not None and gas is not None:
        mb = _exact(
            tb,
            gas * world,
            "train_micro_batch_size_per_gpu",
            f"train_batch_size {tb} / (accumulation {gas} * world_size {world})",
        )
    elif mb is not None and gas is not None:
        tb = mb * gas * world
    elif tb is not None:
        gas = 1
        mb = _exact(
            tb, world, "train_micro_batch_size_per_gpu", f"train_batch_size {tb} / world_size {world}"
        )
    else:
        assert mb is not None
        gas = 1
        tb = mb * world
    assert tb is not None and mb is not None and gas is not None
    return BatchSizes(tb, mb, gas, world)
