"""The tuning space: which ZeRO stages, micro batch sizes and (outside fast mode) stage knobs to try, and
each experiment's DeepSpeed config.

Note: [tuning space] As DeepSpeed documents: ``zero_optimization.stage`` missing or ``"all"`` means stages
0, 1, 2, 3 in that order, an int or a list picks them. ``train_micro_batch_size_per_gpu`` as a list is the
exact list to try; as an int (or ``"auto"`` with an ``arg_mappings`` entry whose flag is in the script's
arguments) it is the smallest one, else ``min_train_micro_batch_size_per_gpu`` is. The largest is
``max_train_micro_batch_size_per_gpu``, lowered so the global batch stays within
``autotuning.max_train_batch_size`` and the micro batch fits the most memory-frugal stage (see
:mod:`ds_launch.autotuning.memory`); ``num_tuning_micro_batch_sizes`` values are spread geometrically
between the two. Any other ``zero_optimization`` key given as a list is a knob to tune; outside fast
mode each stage also tunes DeepSpeed's default knobs for it (:data:`DEFAULT_KNOBS`).
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ds_launch.autotuning.settings import TuningSettings
from ds_launch.errors import LaunchError

logger = logging.getLogger("ds_launch")
ALL_STAGES = (0, 1, 2, 3)
_BUCKETS = [50_000_000, 500_000_000, 1_000_000_000]
# DeepSpeed's default knobs per stage, less those that have no effect in this design (ds-engine's key-effect
# table, Note [key effects] in ds_engine.config.effects; ds-launch cannot import ds-engine, so
# tests/launch/test_autotuning_knobs_have_effect.py checks this list against the table): no experiment is
# spent on contiguous_gradients, allgather_partitions or allgather_bucket_size, nor on reduce_scatter at
# stage 3, whose units always reduce-scatter.
DEFAULT_KNOBS: dict[int, dict[str, list[Any]]] = {
    0: {},
    1: {"reduce_bucket_size": _BUCKETS},
    2: {"overlap_comm": [True, False], "reduce_scatter": [False, True], "reduce_bucket_size": _BUCKETS},
    3: {"overlap_comm": [True, False], "reduce_bucket_size": _BUCKETS},
}
# zero_optimization keys that have no effect in this design (the engine's key-effect table; the same
# cross-package test keeps this set equal to it): a list given for one is not tuned (its first value is used).
NO_EFFECT_KEYS = frozenset(
    {
        "allgather_bucket_size",
        "allgather_partitions",
        "compute_grad_norm",
        "contiguous_gradients",
        "elastic_checkpoint",
        "enable_sanity_checks",
        "ignore_unused_parameters",
        "legacy_stage1",
        "load_from_fp32_weights",
        "log_trace_cache_warnings",
        "memory_efficient_linear",
        "mics_hierarchical_params_gather",
        "override_module_apply",
        "parameter_alignment",
        "pipeline_loading_checkpoint",
        "round_robin_gradients",
        "save_muon_momentum_buffer_in_memory",
        "stage3_allgather_sequential",
        "stage3_use_all_reduce_for_fetch_params",
        "sub_group_size",
        "use_multi_rank_bucket_allreduce",
    }
)
_SHORT = {
    "reduce_bucket_size": "rbs",
    "allgather_bucket_size": "abs",
    "overlap_comm": "oc",
    "reduce_scatter": "rs",
    "contiguous_gradients": "cg",
    "allgather_partitions": "ap",
}


def requested_stages(user_config: Mapping[str, Any]) -> list[int]:
    """The ZeRO stages to explore (Note [tuning space])."""
    zero = user_config.get("zero_optimization")
    if isinstance(zero, bool):
        return [1 if zero else 0]
    if zero is None:
        return list(ALL_STAGES)
    if not isinstance(zero, dict):
        raise LaunchError(f"'zero_optimization' must be an object (got {zero!r})")
    stage = zero.get("stage", "all")
    stages = list(ALL_STAGES) if stage == "all" else stage if isinstance(stage, list) else [stage]
    if not stages or any(isinstance(s, bool) or s not in ALL_STAGES for s in stages):
        raise LaunchError(
            f"'zero_optimization.stage': expected 0-3, a list of them, or \"all\" (got {stage!r})"
        )
    return sorted(set(stages))


def _arg_value(args: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None


def _int_from(
    user_config: Mapping[str, Any], key: str, settings: TuningSettings, args: Sequence[str]
) -> int | None:
    value = user_config.get(key)
    flags = settings.arg_mappings or {}
    if value == "auto" and key in flags:
        value = _arg_value(args, flags[key])
        value = int(value) if value is not None and value.isdigit() else None
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LaunchError(
            f"'{key}': expected a positive integer, a list of them, or \"auto\" (got {value!r})"
        )
    return value


def accumulation_steps(user_config: Mapping[str, Any], settings: TuningSettings, args: Sequence[str]) -> int:
    """Gradient accumulation for every experiment: the user's (a list is not tuned: its first value), else 1."""
    return _int_from(user_config, "gradient_accumulation_steps", settings, args) or 1


def explicit_micro_batches(user_config: Mapping[str, Any]) -> list[int] | None:
    """``train_micro_batch_size_per_gpu`` given as a list: exactly these are tried."""
    value = user_config.get("train_micro_batch_size_per_gpu")
    if not isinstance(value, list):
        return None
    if not value or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise LaunchError(
            f"'train_micro_batch_size_per_gpu': a list must hold positive integers (got {value!r})"
        )
    return sorted(set(value))


def smallest_micro_batch(
    user_config: Mapping[str, Any], settings: TuningSettings, args: Sequence[str]
) -> int:
    """Where the micro batch search starts (Note [tuning space])."""
    given = _int_from(user_config, "train_micro_batch_size_per_gpu", settings, args)
    return given if given is not None else settings.min_train_micro_batch_size_per_gpu


def spread(low: int, high: int, count: int) -> list[int]:
    """``count`` integers from ``low`` to ``high`` (both included when count > 1), geometrically spaced."""
    if high < low:
        return []
    if count <= 1 or high == low:
        return [high]
    ratio = high / low
    return sorted({max(low, min(high, round(low * ratio ** (i / (count - 1))))) for i in range(count)})


@dataclass(frozen=True)
class Experiment:
    """One configuration to run: a ZeRO stage, a micro batch, accumulation, and knob values."""

    stage: int
    micro_batch: int
    accumulation: int
    dp_world_size: int
    knobs: tuple[tuple[str, Any], ...] = ()

    @property
    def train_batch_size(self) -> int:
        """The global batch: micro batch * accumulation * data-parallel ranks."""
        return self.micro_batch * self.accumulation * self.dp_world_size

    @property
    def space(self) -> str:
        """DeepSpeed's tuning-space name: ``z<stage>``."""
        return f"z{self.stage}"

    @property
    def name(self) -> str:
        """DeepSpeed's experiment name (``z1_gas1_tmbspg4``), plus a short code per tuned knob."""
        name = f"z{self.stage}_gas{self.accumulation}_tmbspg{self.micro_batch}"
        return name + "".join(f"_{_SHORT.get(k, k)}{_short_value(v)}" for k, v in self.knobs)


def _short_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int) and value >= 1_000_000 and value % 1_000_000 == 0:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return str(value)


def knob_grid(stage: int, user_config: Mapping[str, Any], *, fast: bool) -> list[tuple[tuple[str, Any], ...]]:
    """Every combination of the stage's knobs: the user's list-valued ``zero_optimization`` keys, plus
    DeepSpeed's defaults for the stage outside fast mode (a scalar the user set pins that knob)."""
    zero = user_config.get("zero_optimization")
    zero = zero if isinstance(zero, dict) else {}
    space: dict[str, list[Any]] = {} if fast else {k: list(v) for k, v in DEFAULT_KNOBS[stage].items()}
    for key, value in zero.items():
        if key == "stage":
            continue
        if isinstance(value, list) and key in NO_EFFECT_KEYS:
            logger.warning(
                "autotuning: 'zero_optimization.%s' has no effect in this engine; not tuned "
                "(its first value is used)",
                key,
            )
            continue
        if isinstance(value, list) and not fast:
            space[key] = list(value)
        elif key in space:
            del space[key]  # the user's scalar (or, in fast mode, first) value is used as given
    keys = sorted(space)
    return [tuple(zip(keys, combo, strict=True)) for combo in itertools.product(*(space[k] for k in keys))]


def experiment_config(
    exp: Experiment, user_config: Mapping[str, Any], autotuning: Mapping[str, Any]
) -> dict[str, Any]:
    """The DeepSpeed config of ``exp``: the user's, with the stage, batch settings, knobs and the
    experiment's ``autotuning`` section filled in (a knob list left untuned contributes its first value)."""
    config = copy.deepcopy(dict(user_config))
    zero = config.get("zero_optimization")
    zero = dict(zero) if isinstance(zero, dict) else {}
    zero = {k: (v[0] if isinstance(v, list) and v else v) for k, v in zero.items()}
    zero.update({"stage": exp.stage, **dict(exp.knobs)})
    config["zero_optimization"] = zero
    config["train_micro_batch_size_per_gpu"] = exp.micro_batch
    config["gradient_accumulation_steps"] = exp.accumulation
    config["train_batch_size"] = exp.train_batch_size
    config["autotuning"] = dict(autotuning)
    return config
