"""Note [zero memory]: per-rank memory by stage, and pruning."""

from __future__ import annotations

import pytest

from ds_launch.autotuning.memory import (
    ModelFacts,
    format_bytes,
    instantiation_bytes,
    largest_fitting_micro_batch,
    memory_prune_reason,
)
from ds_launch.errors import LaunchError

P = 1_000_000


@pytest.mark.parametrize(
    ("stage", "half", "expected"),
    [
        (0, False, 16 * P),
        (1, False, 4 * P + 4 * P + 2 * P),
        (2, False, 4 * P + 1 * P + 2 * P),
        (3, False, 1 * P + 1 * P + 2 * P),
        (0, True, 20 * P),
        (1, True, 2 * P + 2 * P + 4 * P),
        (2, True, 2 * P + 0.5 * P + 4 * P),
        (3, True, 0.5 * P + 0.5 * P + 4 * P),
    ],
)
def test_instantiation_bytes_per_stage(stage, half, expected):
    assert instantiation_bytes(num_params=P, stage=stage, dp_world_size=4, half_precision=half) == expected


def test_model_parallel_divides_everything():
    assert (
        instantiation_bytes(num_params=P, stage=0, dp_world_size=1, half_precision=False, mp_size=2) == 8 * P
    )


def test_facts_from_model_info():
    facts = ModelFacts.from_model_info(
        {
            "num_params": P,
            "activation_mem_per_gpu": 4000,
            "train_micro_batch_size_per_gpu": 4,
            "memory_per_device": 10**9,
        }
    )
    assert (facts.activation_bytes_per_sample, facts.memory_per_device) == (1000.0, 10**9)
    assert ModelFacts.from_model_info({"num_params": P}, memory_override=5).memory_per_device == 5
    assert ModelFacts.from_model_info({"num_params": P}).memory_per_device is None
    with pytest.raises(LaunchError, match="'num_params' must be a non-negative integer"):
        ModelFacts.from_model_info({"num_params": "big"})


def test_pruning_and_largest_micro_batch():
    facts = ModelFacts(num_params=P, activation_bytes_per_sample=100_000, memory_per_device=13 * P)
    assert memory_prune_reason(facts, stage=1, micro_batch=10, dp_world_size=2, half_precision=False) is None
    assert (
        memory_prune_reason(facts, stage=1, micro_batch=11, dp_world_size=2, half_precision=False) is not None
    )
    reason = memory_prune_reason(facts, stage=0, micro_batch=1, dp_world_size=2, half_precision=False)
    assert reason == "needs 15.35 MiB per rank by the ZeRO memory formulas, 12.40 MiB available"
    # stage 1 with 2 ranks: 12 MB of states, 1 MB of room -> 10 samples of 100 kB
    assert largest_fitting_micro_batch(facts, stage=1, dp_world_size=2, half_precision=False) == 10
    assert largest_fitting_micro_batch(facts, stage=0, dp_world_size=2, half_precision=False) == 0
    unknown = ModelFacts(num_params=P)
    assert (
        memory_prune_reason(unknown, stage=0, micro_batch=10**6, dp_world_size=1, half_precision=True) is None
    )
    assert largest_fitting_micro_batch(unknown, stage=0, dp_world_size=1, half_precision=True) is None


def test_format_bytes():
    assert (format_bytes(512), format_bytes(1536), format_bytes(3 * 2**30)) == (
        "512 B",
        "1.50 KiB",
        "3.00 GiB",
    )
