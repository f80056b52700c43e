"""DeepSpeed's elasticity API over a config dict: ``compute_elastic_config`` and its checks.

Schedulers call :func:`compute_elastic_config` with the same config the job will run with, to learn the
world sizes they may scale it to; the runtime calls it again (through :mod:`ds_engine.elasticity.batch`)
with the actual world size. :func:`ensure_immutable_elastic_config` checks that the two saw the same
section when the scheduler exports it as ``DEEPSPEED_ELASTICITY_CONFIG``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ds_engine.config.errors import config_error_from
from ds_engine.config.features import ElasticityConfig
from ds_engine.elasticity.arithmetic import compatible_gpus_v01, compatible_gpus_v02
from ds_engine.elasticity.errors import (
    ElasticityConfigError,
    ElasticityError,
    ElasticityIncompatibleWorldSize,
)

logger = logging.getLogger("ds_engine")

ELASTICITY = "elasticity"
DEEPSPEED_ELASTICITY_CONFIG = "DEEPSPEED_ELASTICITY_CONFIG"
LATEST_ELASTICITY_VERSION = 0.2
MINIMUM_DEEPSPEED_VERSION = "0.3.8"
_IMMUTABLE_KEYS = ("max_train_batch_size", "micro_batch_sizes", "version")


@dataclass(frozen=True)
class ElasticPlan:
    """What elasticity decided: the global batch, the world sizes that can run it, and (for a known world
    size) the micro batch per rank."""

    train_batch_size: int
    valid_world_sizes: list[int]
    micro_batch_size: int | None = None


def parse_elastic_section(section: Any) -> ElasticityConfig:
    """Validate an ``elasticity`` section; errors become :class:`ElasticityConfigError` naming the key."""
    if not isinstance(section, dict):
        raise ElasticityConfigError(f"'elasticity' must be an object, got {type(section).__name__}")
    try:
        return ElasticityConfig.model_validate(section)
    except ValidationError as exc:
        raise ElasticityConfigError(
            str(config_error_from(exc, ElasticityConfig, prefix="elasticity."))
        ) from None


def elasticity_enabled(ds_config: dict[str, Any]) -> bool:
    """Whether ``ds_config`` has an enabled ``elasticity`` section."""
    section = ds_config.get(ELASTICITY)
    return bool(isinstance(section, dict) and section.get("enabled", False))


def ensure_immutable_elastic_config(runtime_elastic_config_dict: dict[str, Any]) -> None:
    """Refuse a runtime ``elasticity`` section that differs from the scheduler's (``DEEPSPEED_ELASTICITY_CONFIG``)
    in max_train_batch_size, micro_batch_sizes or version; warn when the scheduler exported none."""
    exported = os.environ.get(DEEPSPEED_ELASTICITY_CONFIG)
    if exported is None:
        logger.warning(
            "%s is not set: cannot check that the scheduler scales this job with the same elastic config",
            DEEPSPEED_ELASTICITY_CONFIG,
        )
        return
    try:
        scheduler = json.loads(exported)
    except json.JSONDecodeError as exc:
        raise ElasticityConfigError(f"{DEEPSPEED_ELASTICITY_CONFIG} is not valid JSON: {exc.msg}") from None
    if isinstance(scheduler, dict) and isinstance(scheduler.get(ELASTICITY), dict):
        scheduler = scheduler[ELASTICITY]  # the whole ds_config was exported
    if not isinstance(scheduler, dict):
        raise ElasticityConfigError(f"{DEEPSPEED_ELASTICITY_CONFIG} must hold a JSON object")
    theirs = parse_elastic_section({**scheduler, "enabled": False})
    ours = parse_elastic_section({**runtime_elastic_config_dict, "enabled": False})
    for key in _IMMUTABLE_KEYS:
        if getattr(theirs, key) != getattr(ours, key):
            raise ElasticityConfigError(
                f"elastic config '{key}={getattr(theirs, key)}' seen by the resource scheduler does not match "
                f"'{key}={getattr(ours, key)}' passed to the runtime"
            )


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(m.group()) for m in (re.match(r"\d+", part) for part in str(text).split(".")) if m)


def check_target_version(target_deepspeed_version: str) -> None:
    """Elasticity needs DeepSpeed >= 0.3.8 on the scheduler's side."""
    if _version_tuple(target_deepspeed_version) < _version_tuple(MINIMUM_DEEPSPEED_VERSION):
        raise ElasticityError(
            f"target deepspeed version {target_deepspeed_version} is not compatible with the "
            f"minimum version {MINIMUM_DEEPSPEED_VERSION} supporting elasticity"
        )


def _world_size_from_env(what: str) -> int:
    value = os.environ.get("WORLD_SIZE")
    if value is None or not value.isnumeric():
        raise ElasticityConfigError(
            f"elasticity {what} needs the world size: pass world_size= or set WORLD_SIZE "
            f"(WORLD_SIZE is {value!r})"
        )
    return int(value)


def _largest_micro_batch(config: ElasticityConfig, batch: int, world_size: int) -> int:
    assert config.micro_batch_sizes is not None
    for micro in sorted(set(config.micro_batch_sizes), reverse=True):
        if (batch // world_size) % micro == 0:
            return micro
    raise ElasticityError(
        f"no micro batch in {config.micro_batch_sizes} divides train_batch_size {batch} "
        f"over world size {world_size}"
    )


def check_world_size(plan: ElasticPlan, world_size: int) -> None:
    """Raise :class:`ElasticityIncompatibleWorldSize` unless ``world_size`` is one of the plan's."""
    if world_size not in plan.valid_world_sizes:
        raise ElasticityIncompatibleWorldSize(
            f"World size ({world_size}) is not valid with the current list of valid GPU counts: "
            f"{plan.valid_world_sizes} (elastic train_batch_size {plan.train_batch_size}); run on one of those, "
            "or change 'elasticity.min_gpus'/'max_gpus'/'micro_batch_sizes'"
        )


def plan_elastic_batch(
    config: ElasticityConfig, *, world_size: int = 0, need_micro_batch: bool = False
) -> ElasticPlan:
    """Run the arithmetic of ``config.version`` (Note [elastic batch]) for an enabled, validated section.

    With ``world_size > 0`` the world size is checked and the largest fitting micro batch returned;
    version 0.2 needs a world size (from the argument or ``WORLD_SIZE``).
    """
    assert config.max_train_batch_size is not None and config.micro_batch_sizes is not None
    micro = None
    if config.version == 0.1:
        batch, valid = compatible_gpus_v01(
            config.micro_batch_sizes,
            config.max_train_batch_size,
            config.min_gpus,
            config.max_gpus,
            config.prefer_larger_batch,
        )
    else:
        gpus = world_size if world_size > 0 else _world_size_from_env("version 0.2")
        batch, valid, micro = compatible_gpus_v02(
            config.micro_batch_sizes,
            config.max_train_batch_size,
            gpus,
            min_gpus=config.min_gpus,
            max_gpus=config.max_gpus,
            prefer_larger=config.prefer_larger_batch,
            num_gpus_per_node=config.num_gpus_per_node,
            model_parallel_size=config.model_parallel_size,
        )
    plan = ElasticPlan(int(batch), list(valid), micro)
    logger.info(
        "elasticity: train_batch_size %d, valid world sizes (GPUs / model parallel size): %s",
        plan.train_batch_size,
        plan.valid_world_sizes,
    )
    if world_size <= 0 and need_micro_batch and config.version == 0.1:
        world_size = _world_size_from_env("micro batch selection")
    if world_size > 0:
        check_world_size(plan, world_size)
        return ElasticPlan(
            plan.train_batch_size,
            plan.valid_world_sizes,
            _largest_micro_batch(config, plan.train_batch_size, world_size),
        )
    return plan


def compute_elastic_config(
    ds_config: dict[str, Any],
    target_deepspeed_version: str,
    world_size: int = 0,
    return_microbatch: bool = False,
) -> tuple[Any, ...]:
    """DeepSpeed's ``compute_elastic_config``: ``(train_batch_size, valid_gpus)``, plus the micro batch when
    ``world_size > 0`` or ``return_microbatch`` (signature kept positional for DeepSpeed's callers)."""
    if not isinstance(ds_config, dict):
        raise ValueError(f"expected ds_config to be a dict, got a {type(ds_config).__name__}: {ds_config!r}")
    if ELASTICITY not in ds_config:
        raise ElasticityConfigError(
            "'elasticity' is missing from the config; add it to run an elastic training job"
        )
    section = ds_config[ELASTICITY]
    if not isinstance(section, dict) or not section.get("enabled", False):
        raise ElasticityConfigError(
            "elasticity is disabled; set 'elasticity.enabled' to true to run an elastic training job"
        )
    config = parse_elastic_section(section)
    check_target_version(target_deepspeed_version)
    plan = plan_elastic_batch(config, world_size=world_size, need_micro_batch=return_microbatch)
    if world_size > 0 or return_microbatch:
        return plan.train_batch_size, plan.valid_world_sizes, plan.micro_batch_size
    return plan.train_batch_size, plan.valid_world_sizes
