"""``deepspeed.checkpointing``: activation checkpointing over ``torch.utils.checkpoint``.

A checkpointed segment keeps only its inputs during forward and runs again during backward to
rebuild its activations. torch owns that mechanism (including replaying the CPU and accelerator RNG
states, so dropout draws the same mask twice; the streams of :mod:`ds_engine.rng_tracker` are replayed
here); this module adds DeepSpeed's switches around it, set
once per process by :func:`configure` (Lightning calls it while setting up its DeepSpeed strategy):

* ``checkpoint_in_cpu`` (config ``cpu_checkpointing``): the inputs a segment keeps are held in host
  memory until its backward, through ``torch.autograd.graph.save_on_cpu``;
* ``synchronize`` (``synchronize_checkpoint_boundary``): the accelerator is synchronised before and after
  every run of a segment, forward and recompute;
* ``profile``: every run of a segment is timed and logged at INFO on the ``ds_engine`` logger;
* ``partition_activations`` / ``contiguous_checkpointing`` / ``num_checkpoints``: DeepSpeed splits kept
  inputs across *model-parallel* ranks. Without model parallelism each rank's partition is the whole
  tensor, so these only change where memory comes from; a model-parallel ``mpu`` is refused.

Note: [reentrant] :func:`checkpoint` is the reentrant form, as in DeepSpeed: gradients reach the
segment's parameters only when some tensor input requires grad (torch warns otherwise).
:func:`non_reentrant_checkpoint` has no such condition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.checkpoint as torch_checkpoint
from pydantic import ValidationError

from ds_engine.config.auto import resolve_auto
from ds_engine.config.errors import DeepSpeedConfigError, config_error_from
from ds_engine.config.features import ActivationCheckpointingConfig
from ds_engine.config.loading import read_config_source
from ds_engine.rng_tracker import replaying_tracked_streams

logger = logging.getLogger("ds_engine")


@dataclasses.dataclass(frozen=True)
class CheckpointingPolicy:
    """What :func:`configure` set; :func:`checkpoint` reads it on every call."""

    partition_activations: bool = False
    contiguous_checkpointing: bool = False
    num_checkpoints: int | None = None
    checkpoint_in_cpu: bool = False
    synchronize: bool = False
    profile: bool = False


_policy: CheckpointingPolicy | None = None  # None until configure() runs


def _from_config(deepspeed_config: Any) -> CheckpointingPolicy:
    """The policy a DeepSpeed config's ``activation_checkpointing`` section describes."""
    raw, _ = resolve_auto(read_config_source(deepspeed_config))
    section = raw.get("activation_checkpointing") or {}
    try:
        cfg = ActivationCheckpointingConfig.model_validate(section)
    except ValidationError as exc:
        raise config_error_from(
            exc, ActivationCheckpointingConfig, prefix="activation_checkpointing."
        ) from None
    return CheckpointingPolicy(
        partition_activations=cfg.partition_activations,
        contiguous_checkpointing=cfg.contiguous_memory_optimization,
        num_checkpoints=cfg.number_checkpoints,
        checkpoint_in_cpu=cfg.cpu_checkpointing,
        synchronize=cfg.synchronize_checkpoint_boundary,
        profile=cfg.profile,
    )


def _model_parallel_size(mpu: Any) -> int:
    if mpu is None:
        return 1
    if hasattr(mpu, "get_tensor_model_parallel_world_size"):
        return int(mpu.get_tensor_model_parallel_world_size())
    return int(mpu.get_model_parallel_world_size())


def configure(
    mpu_: Any = None,
    deepspeed_config: Any = None,
    partition_activations: bool | None = None,
    contiguous_checkpointing: bool | None = None,
    num_checkpoints: int | None = None,
    checkpoint_in_cpu: bool | None = None,
    synchronize: bool | None = None,
    profile: bool | None = None,
) -> None:
    """Set the activation-checkpointing options for this process.

    ``deepspeed_config`` (a dict, a JSON path or base64 JSON) supplies its ``activation_checkpointing``
    section; each explicit argument that is not None overrides it. ``mpu_`` is a model-parallel unit
    (only a model-parallel size of 1 is supported).
    """
    global _policy
    if _model_parallel_size(mpu_) != 1:
        raise NotImplementedError(
            "deepspeed.checkpointing.configure: model parallelism (an mpu with a "
            "model-parallel size above 1) is not supported yet"
        )
    base = _from_config(deepspeed_config) if deepspeed_config is not None else CheckpointingPolicy()
    flags = {
        "partition_activations": partition_activations,
        "contiguous_checkpointing": contiguous_checkpointing,
        "checkpoint_in_cpu": checkpoint_in_cpu,
        "synchronize": synchronize,
        "profile": profile,
    }
    policy = dataclasses.replace(base, **{k: v for k, v in flags.items() if v is not None})
    if num_checkpoints is not None:
        policy = dataclasses.replace(policy, num_checkpoints=num_checkpoints)
    if policy.contiguous_checkpointing and not policy.partition_activations:
        raise DeepSpeedConfigError(
            "'activation_checkpointing.contiguous_memory_optimization' needs "
            "'activation_checkpointing.partition_activations: true'"
        )
    if policy.contiguous_checkpointing and policy.num_checkpoints is None:
        raise DeepSpeedConfigError(
            "'activation_checkpointing.contiguous_memory_optimization' needs "
            "'activation_checkpointing.number_checkpoints' (the number of checkpointed layers)"
        )
    _policy = policy
    logger.debug("activation checkpointing configured: %s", policy)


def is_configured() -> bool:
    """Whether :func:`configure` has run in this process."""
    return _policy is not None


def current_policy() -> CheckpointingPolicy:
    """The configured policy, or the defaults when :func:`configure` has not run."""
    return _policy if _policy is not None else CheckpointingPolicy()


def reset() -> None:
    """Drop per-iteration buffers (DeepSpeed's contiguous buffers). Kept inputs here belong to the
    autograd graph, which frees them itself, so there is nothing to release; options stay set."""


def set_num_layers(nlayers: int) -> None:
    """Set ``num_checkpoints`` (DeepSpeed's name for the number of checkpointed layers)."""
    global _policy
    _policy = dataclasses.replace(current_policy(), num_checkpoints=nlayers)


def partition_activations_in_checkpoint(partition_activation: bool) -> None:
    """Turn ``partition_activations`` on or off."""
    global _policy
    _policy = dataclasses.replace(current_policy(), partition_activations=partition_activation)


def _synchronize() -> None:
    from ds_accel import get_accelerator

    get_accelerator().synchronize()


def _instrumented(function: Callable[..., Any], policy: CheckpointingPolicy) -> Callable[..., Any]:
    """``function`` with the policy's synchronisation and timing around each run (forward, then recompute)."""
    if not (policy.synchronize or policy.profile):
        return function
    runs = [0]

    def run(*args: Any) -> Any:
        phase = "forward" if runs[0] == 0 else "recompute"
        runs[0] += 1
        if policy.synchronize:
            _synchronize()
        start = time.perf_counter()
        out = function(*args)
        if policy.synchronize:
            _synchronize()
        if policy.profile:
            logger.info(
                "activation checkpoint %s of %s: %.3f ms",
                phase,
                getattr(function, "__name__", "segment"),
                (time.perf_counter() - start) * 1e3,
            )
        return out

    return run


def _positional(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """Fold keyword arguments into positional ones, so tensors passed by keyword take part in autograd."""
    if not kwargs:
        return function, args
    keys, count = tuple(kwargs), len(args)

    def call(*flat: Any) -> Any:
        return function(*flat[:count], **dict(zip(keys, flat[count:])))

    return call, args + tuple(kwargs.values())


@contextlib.contextmanager
def _kept_inputs(policy: CheckpointingPolicy) -> Iterator[None]:
    if policy.checkpoint_in_cpu:
        with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
            yield
    else:
        yield


def checkpoint(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``function(*args, **kwargs)`` keeping only its inputs; recompute it during backward.

    The reentrant form (Note [reentrant]); returns what ``function`` returns.
    """
    policy = current_policy()
    call, flat = _positional(function, args, kwargs)
    with _kept_inputs(policy):
        return torch_checkpoint.checkpoint(
            _instrumented(replaying_tracked_streams(call), policy),
            *flat,
            use_reentrant=True,
            preserve_rng_state=True,
        )


def non_reentrant_checkpoint(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Like :func:`checkpoint`, in torch's non-reentrant form (gradients flow with no input requiring grad).

    torch keeps the inputs of a non-reentrant segment itself, so ``checkpoint_in_cpu`` does not move them.
    """
    policy = current_policy()
    call, flat = _positional(function, args, kwargs)
    return torch_checkpoint.checkpoint(
        _instrumented(replaying_tracked_streams(call), policy),
        *flat,
        use_reentrant=False,
        preserve_rng_state=True,
    )


__all__ = [
    "CheckpointingPolicy",
    "checkpoint",
    "configure",
    "current_policy",
    "is_configured",
    "non_reentrant_checkpoint",
    "partition_activations_in_checkpoint",
    "reset",
    "set_num_layers",
]
