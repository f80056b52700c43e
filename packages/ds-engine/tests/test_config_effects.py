"""Every ``zero_optimization`` key has an effect entry (Note [key effects] in ds_engine.config.effects), every
"applied" entry is read where it says, and every "no effect" key warns when set."""

from __future__ import annotations

import importlib
import inspect
import logging
import re

import pytest

from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError
from ds_engine.config.effects import tables
from ds_engine.config.zero import OFFLOAD_OPTIMIZER_KEYS, ZERO_KEYS


def _cfg(zero: dict) -> DeepSpeedConfig:
    return DeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": zero}, world_size=1)


def test_every_key_of_every_table_section_has_an_entry() -> None:
    assert {path for path, _ in tables().values()} == {
        "zero_optimization", "zero_optimization.offload_optimizer", "zero_optimization.offload_param"}
    for model, (path, table) in tables().items():
        assert set(model.model_fields) == set(table), path


def _source(location: str) -> str:
    module, qualname = location.split(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part) if not isinstance(obj, type) else obj.__dict__.get(part, getattr(obj, part))
    if isinstance(obj, property):
        obj = obj.fget
    return inspect.getsource(obj)


# The check reads the source of each named reader and looks for an attribute access or a string key with
# the field's name: cheap, and it fails exactly when a key is listed as applied but its reader stopped
# reading it (the way contiguous_gradients and allgather_bucket_size were set and never read).
APPLIED = [(path, name, where) for _, (path, table) in tables().items() for name, effect in table.items()
           if effect.kind == "applied" for where in effect.where]


@pytest.mark.parametrize(("path", "name", "where"), APPLIED, ids=[f"{p}.{n}@{w}" for p, n, w in APPLIED])
def test_applied_keys_are_read_where_the_table_says(path: str, name: str, where: str) -> None:
    location, _, attr = where.partition("#")
    attr = attr or name
    assert re.search(rf"\.{attr}\b|[\"']{attr}[\"']", _source(location)), f"{path}.{name} is not read in {location}"


# Each key that was accepted and never read before this table: a non-default value now warns, once, with why.
FORMERLY_IGNORED = [
    ({"contiguous_gradients": False}, "zero_optimization.contiguous_gradients"),
    ({"use_multi_rank_bucket_allreduce": False}, "zero_optimization.use_multi_rank_bucket_allreduce"),
    ({"allgather_partitions": False}, "zero_optimization.allgather_partitions"),
    ({"allgather_bucket_size": 5_000}, "zero_optimization.allgather_bucket_size"),
    ({"stage": 2, "compute_grad_norm": False}, "zero_optimization.compute_grad_norm"),
    ({"offload_optimizer": {"device": "cpu", "fast_init": True}}, "zero_optimization.offload_optimizer.fast_init"),
    ({"stage": 3, "offload_optimizer": {"device": "cpu", "ratio": 0.3}}, "zero_optimization.offload_optimizer.ratio"),
    ({"offload_optimizer": {"device": "cpu", "super_offload": True}},
     "zero_optimization.offload_optimizer.super_offload"),
    ({"offload_optimizer": {"device": "cpu", "cpuadam_cores_perc": 0.5}},
     "zero_optimization.offload_optimizer.cpuadam_cores_perc"),
]


@pytest.mark.parametrize(("zero", "key"), FORMERLY_IGNORED, ids=[k for _, k in FORMERLY_IGNORED])
def test_no_effect_keys_warn_when_set(zero: dict, key: str, config_log) -> None:
    _cfg(zero)
    messages = [r.getMessage() for r in config_log.records if r.levelno == logging.WARNING]
    assert any(f"'{key}' has no effect here: " in m for m in messages), messages


def test_no_effect_keys_at_their_defaults_are_silent(config_log) -> None:
    _cfg({"stage": 2, "contiguous_gradients": True, "allgather_bucket_size": 500_000_000,
          "offload_optimizer": {"device": "cpu", "ratio": 1.0, "fast_init": False}})
    assert not [r for r in config_log.records if "has no effect" in r.getMessage()]


def test_formerly_ignored_keys_are_classified() -> None:
    for name in ("contiguous_gradients", "use_multi_rank_bucket_allreduce", "allgather_partitions",
                 "allgather_bucket_size", "compute_grad_norm"):
        assert ZERO_KEYS[name].kind == "no effect" and ZERO_KEYS[name].why
    assert ZERO_KEYS["reduce_scatter"].kind == "applied"
    for name in ("fast_init", "ratio", "super_offload", "cpuadam_cores_perc"):
        assert OFFLOAD_OPTIMIZER_KEYS[name].kind == "no effect"


def test_reduce_scatter_and_pin_memory_reach_the_policy() -> None:
    from ds_engine.zero_policy import policy_from_config

    assert policy_from_config(_cfg({"stage": 2, "reduce_scatter": False})).reduce.reduce_scatter is False
    assert policy_from_config(_cfg({"stage": 2})).reduce.reduce_scatter is True
    # offload_param's own pin_memory (stage 3 without an offload_optimizer section) was never read
    param_only = {"stage": 3, "offload_param": {"device": "cpu", "pin_memory": False}}
    assert policy_from_config(_cfg(param_only)).offload.pin_memory is False
    # the deprecated cpu_offload_use_pin_memory was accepted and never read
    legacy = {"stage": 2, "cpu_offload": True, "cpu_offload_use_pin_memory": False}
    assert policy_from_config(_cfg(legacy)).offload.pin_memory is False


@pytest.mark.parametrize(("zero", "gate"), [
    ({"zenflow": {}}, "'zero_optimization.zenflow'"),
    ({"mics_shard_size": 2}, "'zero_optimization.mics_shard_size>0'"),
    ({"offload_param": {"device": "nvme"}}, "'zero_optimization.offload_param.device=nvme'"),
    ({"stage": 3, "zero_quantized_gradients": True}, "'zero_optimization.zero_quantized_gradients (ZeRO++)'"),
])
def test_refusals_come_from_the_table(zero: dict, gate: str) -> None:
    with pytest.raises(DeepSpeedConfigError, match=re.escape(gate)):
        _cfg(zero)


@pytest.mark.parametrize("stage", [1, 2])
def test_grad_accum_dtype_warns_where_it_is_not_followed(stage: int, config_log) -> None:
    # stages 1-2 accumulate in the model's dtype (Note [gradient dtypes] in ds_zero.dtypes): say so
    DeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True},
                     "data_types": {"grad_accum_dtype": "fp32"}, "zero_optimization": {"stage": stage}}, world_size=1)
    assert any(f"'data_types.grad_accum_dtype' has no effect at ZeRO stage {stage}" in r.getMessage()
               for r in config_log.records)
