"""Elastic batch arithmetic against DeepSpeed's documented examples (the expected numbers are those of
DeepSpeed's own elasticity tests), and how an enabled section overrides the batch keys."""

from __future__ import annotations

import json

import pytest

from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError
from ds_engine.elasticity import (
    DEEPSPEED_ELASTICITY_CONFIG,
    ElasticityConfigError,
    ElasticityError,
    ElasticityIncompatibleWorldSize,
    candidate_batch_sizes,
    compute_elastic_config,
    elasticity_enabled,
    ensure_immutable_elastic_config,
    valid_world_sizes,
)

VERSION = "0.20.0"


@pytest.fixture
def ds_config():
    return {
        "elasticity": {
            "enabled": True,
            "max_train_batch_size": 10000,
            "micro_batch_sizes": [8, 12, 16, 17],
            "min_gpus": 32,
            "max_gpus": 1500,
            "min_time": 20,
            "version": 0.1,
        }
    }


@pytest.fixture(autouse=True)
def _no_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv(DEEPSPEED_ELASTICITY_CONFIG, raising=False)


def test_basic_10k(ds_config):
    final_batch_size, valid_gpus = compute_elastic_config(ds_config, VERSION)
    assert final_batch_size == 9792 and len(valid_gpus) == 23
    for gpus in valid_gpus:
        assert final_batch_size % gpus == 0
        assert any(
            (final_batch_size // gpus) % mb == 0 for mb in ds_config["elasticity"]["micro_batch_sizes"]
        )


def test_world_size_picks_the_largest_micro_batch(ds_config):
    assert compute_elastic_config(ds_config, VERSION, world_size=64)[2] == 17
    with pytest.raises(ElasticityIncompatibleWorldSize, match=r"World size \(128\) is not valid"):
        compute_elastic_config(ds_config, VERSION, world_size=128)


def test_return_microbatch_reads_world_size(ds_config, monkeypatch):
    with pytest.raises(ElasticityConfigError, match="needs the world size"):
        compute_elastic_config(ds_config, VERSION, return_microbatch=True)
    monkeypatch.setenv("WORLD_SIZE", "64")
    assert compute_elastic_config(ds_config, VERSION, return_microbatch=True)[::2] == (9792, 17)
    monkeypatch.setenv("WORLD_SIZE", "128")
    with pytest.raises(ElasticityIncompatibleWorldSize):
        compute_elastic_config(ds_config, VERSION, return_microbatch=True)


def test_proper_micro_batch(ds_config):
    ds_config["elasticity"].update(max_train_batch_size=32, micro_batch_sizes=[1, 2, 3, 7], min_gpus=1)
    assert compute_elastic_config(ds_config, VERSION, world_size=4)[2] == 3


def test_batch_size_within_max(ds_config):
    ds_config["elasticity"].update(max_train_batch_size=100, micro_batch_sizes=[8, 10, 12], min_gpus=1)
    assert compute_elastic_config(ds_config, VERSION)[0] <= 100


def test_lcm_over_the_cap_is_not_a_candidate():
    assert candidate_batch_sizes([1, 2, 3, 7, 42], 32) == [18, 24, 28]  # 42 (the lcm) is over the cap
    assert valid_world_sizes(24, [1, 2, 3], 1, 100) == [1, 2, 3, 4, 6, 8, 12, 24]


@pytest.mark.parametrize(
    ("mp", "micro", "expected"), [(1, [4, 8], 4), (2, [4, 8], 8), (4, [4, 8], 8), (2, [8], 8), (4, [8], 8)]
)
def test_v02_micro_batch_is_per_data_parallel_rank(ds_config, monkeypatch, mp, micro, expected):
    ds_config["elasticity"].update(
        version=0.2,
        model_parallel_size=mp,
        num_gpus_per_node=8,
        max_train_batch_size=64,
        micro_batch_sizes=micro,
        min_gpus=16,
        max_gpus=16,
    )
    monkeypatch.setenv("WORLD_SIZE", "16")
    final_batch_size, _, micro_batch = compute_elastic_config(ds_config, VERSION, return_microbatch=True)
    assert micro_batch == expected and final_batch_size // (16 // mp) % micro_batch == 0


def test_v02_model_parallel(ds_config, monkeypatch):
    ds_config["elasticity"].update(version=0.2, model_parallel_size=4, num_gpus_per_node=8)
    monkeypatch.setenv("WORLD_SIZE", "16")
    compute_elastic_config(ds_config, VERSION)
    ds_config["elasticity"]["model_parallel_size"] = 16
    with pytest.raises(
        ElasticityError, match="num_gpus_per_node 8 must be divisible by model_parallel_size 16"
    ):
        compute_elastic_config(ds_config, VERSION, world_size=16)


def test_v02_falls_back_to_the_current_world_size(ds_config):
    ds_config["elasticity"].update(
        version=0.2, max_train_batch_size=100, micro_batch_sizes=[4, 6], min_gpus=1, max_gpus=4
    )
    batch, valid, micro = compute_elastic_config(ds_config, VERSION, world_size=7, return_microbatch=True)
    assert (batch, valid, micro) == (
        84,
        [7],
        6,
    )  # 7 ranks are not elastic-friendly: the best batch 7 ranks can run


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "0.3"}, "elasticity version 0.3 is not supported"),
        ({"max_train_batch_size": None}, "max_train_batch_size is missing"),
        ({"micro_batch_sizes": None}, "micro_batch_sizes is missing"),
        (
            {"model_parallel_size": 4, "num_gpus_per_node": 8},
            "version 0.1 does not support model parallelism",
        ),
        ({"micro_batch_sizes": [1, 4, -1, 2, -10]}, "'elasticity.micro_batch_sizes[2]'"),
        ({"micro_batch_sizes": 5}, "'elasticity.micro_batch_sizes'"),
        ({"micro_batch_sizes": ["a", None, 0.5]}, "'elasticity.micro_batch_sizes[0]'"),
        ({"micro_batch_sizes": [2, 0.5, 4]}, "'elasticity.micro_batch_sizes[1]'"),
        ({"min_gpus": -1}, "'elasticity.min_gpus'"),
        ({"max_gpus": -1}, "'elasticity.max_gpus'"),
        ({"min_gpus": 10, "max_gpus": 5}, "min_gpus 10 is larger than max_gpus 5"),
        ({"micro_batch_sizes": [20000]}, "every micro batch size must be <= max_train_batch_size 10000"),
    ],
)
def test_invalid_sections(ds_config, change, message):
    section = ds_config["elasticity"]
    for key, value in change.items():
        if value is None:
            del section[key]
        else:
            section[key] = value
    with pytest.raises(ElasticityError) as err:
        compute_elastic_config(ds_config, VERSION)
    assert message in str(err.value)


def test_disabled_missing_and_old_versions(ds_config):
    with pytest.raises(ElasticityConfigError, match="'elasticity' is missing"):
        compute_elastic_config({}, VERSION)
    with pytest.raises(ElasticityError, match="target deepspeed version 0.2 is not compatible"):
        compute_elastic_config(ds_config, "0.2")
    with pytest.raises(ElasticityError, match="must be enabled|elasticity is disabled"):
        compute_elastic_config({"elasticity": {"enabled": False}}, VERSION)
    with pytest.raises(ElasticityError):
        compute_elastic_config({"elasticity": {"enabled": True}}, VERSION)
    assert elasticity_enabled(ds_config) and not elasticity_enabled({"elasticity": {"enabled": False}})


def test_scheduler_and_runtime_must_agree(ds_config, monkeypatch, caplog):
    runtime = ds_config["elasticity"]
    ensure_immutable_elastic_config(runtime)
    assert DEEPSPEED_ELASTICITY_CONFIG in caplog.text  # warned: nothing to compare with
    monkeypatch.setenv(DEEPSPEED_ELASTICITY_CONFIG, json.dumps(ds_config))
    ensure_immutable_elastic_config(runtime)
    monkeypatch.setenv(DEEPSPEED_ELASTICITY_CONFIG, json.dumps({**runtime, "max_train_batch_size": 27}))
    with pytest.raises(
        ElasticityConfigError, match="'max_train_batch_size=27' seen by the resource scheduler"
    ):
        ensure_immutable_elastic_config(runtime)


# --- the runtime: DeepSpeedConfig ----------------------------------------------------------------------
ELASTIC = {
    "enabled": True,
    "max_train_batch_size": 16,
    "micro_batch_sizes": [2, 4],
    "min_gpus": 1,
    "max_gpus": 4,
    "version": 0.1,
}


@pytest.mark.parametrize(("world", "triple"), [(1, (16, 4, 4)), (2, (16, 4, 2)), (4, (16, 4, 1))])
def test_config_overrides_the_batch_triple(world, triple):
    cfg = DeepSpeedConfig({"elasticity": ELASTIC}, world_size=world)
    assert (
        cfg.train_batch_size,
        cfg.train_micro_batch_size_per_gpu,
        cfg.gradient_accumulation_steps,
    ) == triple
    assert cfg.elasticity_enabled


def test_config_refuses_an_invalid_world_size():
    with pytest.raises(
        ElasticityIncompatibleWorldSize,
        match=r"World size \(3\) is not valid with the current list "
        r"of valid GPU counts: \[1, 2, 4\]",
    ):
        DeepSpeedConfig({"elasticity": ELASTIC}, world_size=3)


def test_batch_keys_outside_the_section():
    given = {"train_batch_size": 8, "gradient_accumulation_steps": "auto", "elasticity": ELASTIC}
    with pytest.raises(
        ElasticityConfigError, match="batch keys train_batch_size are set, but elastic training"
    ):
        DeepSpeedConfig(given, world_size=2)
    cfg = DeepSpeedConfig(
        {**given, "elasticity": {**ELASTIC, "ignore_non_elastic_batch_info": True}}, world_size=2
    )
    assert cfg.train_batch_size == 16  # overridden
    assert (
        DeepSpeedConfig({"train_batch_size": "auto", "elasticity": ELASTIC}, world_size=2).train_batch_size
        == 16
    )


def test_config_errors_name_the_key():
    with pytest.raises(DeepSpeedConfigError, match="'elasticity.micro_batch_sizes\\[0\\]'"):
        DeepSpeedConfig({"elasticity": {**ELASTIC, "micro_batch_sizes": [0]}}, world_size=1)
    with pytest.raises(
        DeepSpeedConfigError,
        match="unknown key 'elasticity.max_gpu' in 'elasticity'; did you mean 'elasticity.max_gpus'",
    ):
        DeepSpeedConfig(
            {"strict": True, "elasticity": {**ELASTIC, "max_gpu": 4}}, world_size=1
        )  # strict: unknown keys
    disabled = DeepSpeedConfig({"train_batch_size": 4, "elasticity": {"enabled": False}}, world_size=2)
    assert (disabled.train_batch_size, disabled.elasticity_enabled) == (4, False)


def test_config_v02_uses_the_given_world_size():
    section = {**ELASTIC, "version": 0.2, "num_gpus_per_node": 2, "max_gpus": 8}
    cfg = DeepSpeedConfig({"elasticity": section}, world_size=2)
    assert (cfg.train_batch_size, cfg.train_micro_batch_size_per_gpu, cfg.gradient_accumulation_steps) == (
        16,
        4,
        2,
    )
