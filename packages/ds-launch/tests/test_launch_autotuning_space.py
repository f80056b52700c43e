"""The tuning space: stages, micro batch sizes, knobs, experiment names and configs."""

from __future__ import annotations

import pytest

from ds_launch.autotuning import space
from ds_launch.autotuning.settings import parse_settings
from ds_launch.errors import LaunchError

SETTINGS = parse_settings(
    {
        "arg_mappings": {
            "train_micro_batch_size_per_gpu": "--per_device_train_batch_size",
            "gradient_accumulation_steps": "--gas",
        }
    }
)


@pytest.mark.parametrize(
    ("zero", "stages"),
    [
        (None, [0, 1, 2, 3]),
        ({}, [0, 1, 2, 3]),
        ({"stage": "all"}, [0, 1, 2, 3]),
        ({"stage": 2}, [2]),
        ({"stage": [3, 2, 2]}, [2, 3]),
        (True, [1]),
        (False, [0]),
    ],
)
def test_requested_stages(zero, stages):
    config = {} if zero is None else {"zero_optimization": zero}
    assert space.requested_stages(config) == stages


@pytest.mark.parametrize("stage", [4, [1, 5], [], "two", True])
def test_bad_stage(stage):
    with pytest.raises(LaunchError, match="'zero_optimization.stage': expected 0-3"):
        space.requested_stages({"zero_optimization": {"stage": stage}})


def test_spread_is_geometric_and_inclusive():
    assert space.spread(1, 4, 3) == [1, 2, 4]
    assert space.spread(1, 1024, 3) == [1, 32, 1024]
    assert space.spread(2, 3, 5) == [2, 3]
    assert space.spread(4, 4, 3) == [4]
    assert space.spread(1, 16, 1) == [16]
    assert space.spread(5, 4, 3) == []


def test_micro_batch_sources():
    args = ["--per_device_train_batch_size", "6", "--gas", "3"]
    assert space.smallest_micro_batch({"train_micro_batch_size_per_gpu": 4}, SETTINGS, args) == 4
    assert space.smallest_micro_batch({"train_micro_batch_size_per_gpu": "auto"}, SETTINGS, args) == 6
    assert space.smallest_micro_batch({}, SETTINGS, args) == 1
    assert space.explicit_micro_batches({"train_micro_batch_size_per_gpu": [16, 1, 4]}) == [1, 4, 16]
    assert space.explicit_micro_batches({"train_micro_batch_size_per_gpu": 4}) is None
    assert space.accumulation_steps({"gradient_accumulation_steps": "auto"}, SETTINGS, args) == 3
    assert space.accumulation_steps({"gradient_accumulation_steps": [2, 4]}, SETTINGS, args) == 2
    assert space.accumulation_steps({}, SETTINGS, []) == 1
    with pytest.raises(
        LaunchError, match="'train_micro_batch_size_per_gpu': a list must hold positive integers"
    ):
        space.explicit_micro_batches({"train_micro_batch_size_per_gpu": [0, 2]})
    with pytest.raises(LaunchError, match="'gradient_accumulation_steps': expected a positive integer"):
        space.accumulation_steps({"gradient_accumulation_steps": -1}, SETTINGS, [])


def test_names_follow_deepspeed():
    exp = space.Experiment(1, 4, 2, 8)
    assert (exp.name, exp.space, exp.train_batch_size) == ("z1_gas2_tmbspg4", "z1", 64)
    knobbed = space.Experiment(2, 4, 1, 2, (("overlap_comm", True), ("reduce_bucket_size", 500_000_000)))
    assert knobbed.name == "z2_gas1_tmbspg4_oc1_rbs5e8"


def test_knob_grid():
    assert space.knob_grid(2, {}, fast=True) == [()]
    assert space.knob_grid(0, {}, fast=False) == [()]
    # DeepSpeed's knobs less those with no effect here (allgather_bucket_size, contiguous_gradients, ...)
    assert len(space.knob_grid(1, {}, fast=False)) == 3
    assert len(space.knob_grid(2, {}, fast=False)) == 2 * 2 * 3
    assert len(space.knob_grid(3, {}, fast=False)) == 2 * 3
    user = {"zero_optimization": {"stage": 1, "reduce_bucket_size": [5e7, 5e8], "allgather_bucket_size": 5e8}}
    grid = space.knob_grid(1, user, fast=False)
    assert grid == [
        (("reduce_bucket_size", 5e7),),
        (("reduce_bucket_size", 5e8),),
    ]  # the scalar pins its knob
    assert space.knob_grid(1, user, fast=True) == [()]


def test_experiment_config():
    user = {
        "train_batch_size": 999,
        "optimizer": {"type": "Adam", "params": {"betas": [0.9, 0.99]}},
        "zero_optimization": {"stage": [1, 2], "reduce_bucket_size": [5e7, 5e8], "overlap_comm": True},
        "autotuning": {"enabled": True, "results_dir": "r"},
    }
    exp = space.Experiment(2, 4, 2, 4, (("allgather_bucket_size", 5e8),))
    config = space.experiment_config(exp, user, {"enabled": True, "metric_path": "/m.json"})
    assert config["zero_optimization"] == {
        "stage": 2,
        "reduce_bucket_size": 5e7,
        "overlap_comm": True,
        "allgather_bucket_size": 5e8,
    }
    assert (
        config["train_micro_batch_size_per_gpu"],
        config["gradient_accumulation_steps"],
        config["train_batch_size"],
    ) == (4, 2, 32)
    assert config["optimizer"]["params"]["betas"] == [0.9, 0.99]  # lists outside the tuning keys stay lists
    assert config["autotuning"] == {"enabled": True, "metric_path": "/m.json"}
    assert user["zero_optimization"]["stage"] == [1, 2]  # the user's config is not modified
