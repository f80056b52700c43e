"""Every ``zero_optimization`` key has an effect entry (Note [key effects] in ds_engine.config.effects), every
"applied" entry is read where it says, and every "no effect" key warns when set."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from pydantic import BaseModel

from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError, DeepSpeedConfigModel
from ds_engine.config.effects import tables
from ds_engine.config.zero import OFFLOAD_OPTIMIZER_KEYS, ZERO_KEYS


def _cfg(zero: dict) -> DeepSpeedConfig:
    return DeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": zero}, world_size=1)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_submodel, typing.get_args(annotation)) if m is not None), None)


def _walk(model: type[BaseModel], path: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """Every config section model under ``model`` (itself included), with its key path."""
    yield path, model
    for name, field in model.model_fields.items():
        child = _submodel(field.annotation)
        if child is not None:
            yield from _walk(child, f"{path}.{field.alias or name}" if path else field.alias or name)


def test_every_field_of_every_section_has_an_entry() -> None:
    # Walks the pydantic models themselves: a field added to any section without a declaration fails here.
    known = tables()
    for path, model in _walk(DeepSpeedConfigModel):
        assert model in known, f"section '{path or '<top level>'}' ({model.__name__}) has no effect table"
        table_path, table = known[model]
        assert table_path == path, model.__name__
        assert set(model.model_fields) == set(table), f"{path}: {set(model.model_fields) ^ set(table)}"
        for name, effect in table.items():
            child = _submodel(model.model_fields[name].annotation)
            assert child is not None or not effect.nested, (
                f"{path}.{name} is declared a section but is not one"
            )
            if effect.kind == "no effect":
                assert effect.why, f"{path}.{name}: a no-effect key says why"
            if effect.kind == "refused":
                assert effect.when is not None and effect.refuse_why, f"{path}.{name}"
    assert len(known) == len(list(_walk(DeepSpeedConfigModel)))  # no table for a section that does not exist


def _source(location: str) -> str:
    module, qualname = location.split(":")
    # the autotuner's keys are read by the launcher (ds-launch), which ds-engine's own session lacks
    obj = pytest.importorskip(module) if module.startswith("ds_launch") else importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part) if not isinstance(obj, type) else obj.__dict__.get(part, getattr(obj, part))
    if isinstance(obj, property):
        obj = obj.fget
    return inspect.getsource(obj)


# The check reads the source of each named reader and looks for an attribute access or a string key with
# the field's name: cheap, and it fails exactly when a key is listed as applied but its reader stopped
# reading it (the way contiguous_gradients and allgather_bucket_size were set and never read).
APPLIED = [
    (path, name, where)
    for _, (path, table) in tables().items()
    for name, effect in table.items()
    if effect.kind == "applied"
    for where in effect.where
]


@pytest.mark.parametrize(("path", "name", "where"), APPLIED, ids=[f"{p}.{n}@{w}" for p, n, w in APPLIED])
def test_applied_keys_are_read_where_the_table_says(path: str, name: str, where: str) -> None:
    location, _, attr = where.partition("#")
    attr = attr or name
    assert re.search(rf"\.{attr}\b|[\"']{attr}[\"']", _source(location)), (
        f"{path}.{name} is not read in {location}"
    )


# Each key that was accepted and never read before this table: a non-default value now warns, once, with why.
FORMERLY_IGNORED = [
    ({"contiguous_gradients": False}, "zero_optimization.contiguous_gradients"),
    ({"use_multi_rank_bucket_allreduce": False}, "zero_optimization.use_multi_rank_bucket_allreduce"),
    ({"allgather_partitions": False}, "zero_optimization.allgather_partitions"),
    ({"allgather_bucket_size": 5_000}, "zero_optimization.allgather_bucket_size"),
    ({"stage": 2, "compute_grad_norm": False}, "zero_optimization.compute_grad_norm"),
    (
        {"offload_optimizer": {"device": "cpu", "fast_init": True}},
        "zero_optimization.offload_optimizer.fast_init",
    ),
    (
        {"stage": 3, "offload_optimizer": {"device": "cpu", "ratio": 0.3}},
        "zero_optimization.offload_optimizer.ratio",
    ),
    (
        {"offload_optimizer": {"device": "cpu", "super_offload": True}},
        "zero_optimization.offload_optimizer.super_offload",
    ),
    (
        {"offload_optimizer": {"device": "cpu", "cpuadam_cores_perc": 0.5}},
        "zero_optimization.offload_optimizer.cpuadam_cores_perc",
    ),
]


@pytest.mark.parametrize(("zero", "key"), FORMERLY_IGNORED, ids=[k for _, k in FORMERLY_IGNORED])
def test_no_effect_keys_warn_when_set(zero: dict, key: str, config_log) -> None:
    _cfg(zero)
    messages = [r.getMessage() for r in config_log.records if r.levelno == logging.WARNING]
    assert any(f"'{key}' has no effect here: " in m for m in messages), messages


def test_no_effect_keys_at_their_defaults_are_silent(config_log) -> None:
    _cfg(
        {
            "stage": 2,
            "contiguous_gradients": True,
            "allgather_bucket_size": 500_000_000,
            "offload_optimizer": {"device": "cpu", "ratio": 1.0, "fast_init": False},
        }
    )
    assert not [r for r in config_log.records if "has no effect" in r.getMessage()]


def test_formerly_ignored_keys_are_classified() -> None:
    for name in (
        "contiguous_gradients",
        "use_multi_rank_bucket_allreduce",
        "allgather_partitions",
        "allgather_bucket_size",
        "compute_grad_norm",
    ):
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


def test_reduce_bucket_size_reaches_the_policy_only_when_set() -> None:
    """Unset, ZeRO adapts it to the transport (Note [adaptive buckets] in ds_zero.policy); DeepSpeed's
    default written out is a set value and is kept."""
    from ds_engine.zero_policy import policy_from_config

    assert policy_from_config(_cfg({"stage": 2})).reduce.bucket_numel is None
    assert (
        policy_from_config(_cfg({"stage": 2, "reduce_bucket_size": 5e8})).reduce.bucket_numel == 500_000_000
    )


@pytest.mark.parametrize(
    ("zero", "gate"),
    [
        (
            {"stage": 3, "offload_optimizer": {"device": "cpu"}, "zenflow": {"update_interval": 2}},
            "'zero_optimization.zenflow (stage 3)'",
        ),
        ({"mics_shard_size": 2}, "'zero_optimization.mics_shard_size>0'"),
        (
            {"stage": 3, "zero_quantized_gradients": True},
            "'zero_optimization.zero_quantized_gradients (ZeRO++)'",
        ),
    ],
)
def test_refusals_come_from_the_table(zero: dict, gate: str) -> None:
    with pytest.raises(DeepSpeedConfigError, match=re.escape(gate)):
        _cfg(zero)


@pytest.mark.parametrize("stage", [1, 2])
def test_grad_accum_dtype_reaches_stages_1_and_2_without_a_warning(stage: int, config_log) -> None:
    # followed at every stage now (Note [gradient dtypes] in ds_zero.dtypes): no "has no effect" line
    from ds_engine.zero_policy import policy_from_config
    from ds_zero.dtypes import grad_dtypes

    cfg = DeepSpeedConfig(
        {
            "train_micro_batch_size_per_gpu": 1,
            "bf16": {"enabled": True},
            "data_types": {"grad_accum_dtype": "fp32"},
            "zero_optimization": {"stage": stage},
        },
        world_size=1,
    )
    assert not any("grad_accum_dtype" in r.getMessage() for r in config_log.records)
    assert grad_dtypes(policy_from_config(cfg).mixed_precision, stage).accum == torch.float32


# --- every "no effect" key, at every level, logs why when set (Note [key effects]) ----------------------------
# Sections whose mere presence is refused: their keys can never be set without an error, so nothing to log.
REFUSED_WHEN_PRESENT: set[str] = set()
_ZENFLOW_ON = {
    "zero_optimization": {
        "stage": 2,
        "offload_optimizer": {"device": "cpu"},
        "zenflow": {"update_interval": 2},
    }
}
# Values the generic rule below cannot pick (it would hit a section's own validation).
NON_DEFAULT = {
    "zero_optimization.offload_optimizer.ratio": (0.5, {"zero_optimization": {"stage": 3}}),
    "zero_optimization.compute_grad_norm": (False, {"zero_optimization": {"stage": 2}}),
    "zero_optimization.offload_optimizer.cpuadam_cores_perc": (0.5, {}),
    "optimizer.legacy_fusion": (True, {"optimizer": {"type": "SGD"}}),
    "zero_optimization.zenflow.auto_ratio": (0.5, _ZENFLOW_ON),
    "zero_optimization.zenflow.pt_reserved_cores_perc": (0.25, _ZENFLOW_ON),
}


def _other_value(annotation: Any, default: Any) -> Any:
    """A valid value of ``annotation`` that differs from ``default``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return next(v for v in typing.get_args(annotation) if v != default)
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return _other_value(args[0], default)
    if annotation is bool:
        return not default
    if annotation in (int, float):
        return default + 1 if isinstance(default, (int, float)) and not isinstance(default, bool) else 2
    if annotation is str:
        return "other"
    origin = typing.get_origin(annotation) or annotation
    if origin is dict:
        return {"some_option": 1}
    if origin is list:
        return ["other"]
    if isinstance(annotation, type) and issubclass(annotation, os.PathLike):
        return "/tmp/elsewhere"
    raise AssertionError(f"no other value for {annotation}")


def _no_effect_keys() -> list[tuple[str, Any, dict]]:
    out = []
    for path, model in _walk(DeepSpeedConfigModel):
        if path in REFUSED_WHEN_PRESENT:
            continue
        for name, effect in tables()[model][1].items():
            field = model.model_fields[name]
            full = f"{path}.{field.alias or name}" if path else field.alias or name
            if effect.kind != "no effect":
                continue
            default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
            value, extra = NON_DEFAULT.get(full, (None, {}))
            out.append((full, _other_value(field.annotation, default) if value is None else value, extra))
    return out


NO_EFFECT = _no_effect_keys()


def _nest(path: str, value: Any) -> dict:
    *parents, leaf = path.split(".")
    node: dict = {leaf: value}
    for part in reversed(parents):
        node = {part: node}
    return node


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


@pytest.mark.parametrize(("key", "value", "extra"), NO_EFFECT, ids=[k for k, _, _ in NO_EFFECT])
def test_every_no_effect_key_logs_why_when_set(key: str, value: Any, extra: dict, config_log) -> None:
    raw = _merge(_merge({"train_micro_batch_size_per_gpu": 1}, extra), _nest(key, value))
    DeepSpeedConfig(raw, world_size=1)
    warnings = [r.getMessage() for r in config_log.records if r.levelno == logging.WARNING]
    assert any(f"'{key}' has no effect here: " in m for m in warnings), warnings
    assert not any("unknown key" in m for m in warnings), warnings  # the key was taken as the table's key


def test_the_walk_covers_the_sections_named_in_the_issue() -> None:
    # the no-effect sweep reaches the top level and nested sections, not only zero_optimization
    keys = {k for k, _, _ in NO_EFFECT}
    assert {
        "zero_allow_untested_optimizer",
        "seq_parallel_communication_data_type",
        "checkpoint.load_universal",
        "checkpoint.writer.type",
        "amp.opt_level",
        "compile.free_activation",
        "pipeline.pipe_partitioned",
        "aio.single_submit",
        "tensor_parallel.tp_grain_size",
        "compression_training",
    } <= keys
