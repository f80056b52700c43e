"""What a configuration needs per rank, by the ZeRO memory formulas, and which ones cannot fit.

Note: [zero memory] With ``P`` parameters trained by Adam, a rank holds parameters and gradients (4 bytes
each per parameter in fp32, 2 under fp16/bf16) and optimizer state (8 bytes: two fp32 moments; 16 under
fp16/bf16, which adds the fp32 master copy and rounds up as DeepSpeed does). Stage 1 divides the optimizer
state by the data-parallel size, stage 2 also the gradients, stage 3 also the parameters; model
parallelism divides everything by ``mp_size``. Activations add the bytes a forward keeps for backward
per sample (measured by the profiling run) times the micro batch. A configuration whose total exceeds
the memory one rank may use is pruned: it is recorded, never launched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ds_launch.errors import LaunchError


@dataclass(frozen=True)
class ModelFacts:
    """What the profiling run (or ``autotuning.model_info``) says about the model and the device."""

    num_params: int
    activation_bytes_per_sample: float = 0.0
    memory_per_device: int | None = None

    @classmethod
    def from_model_info(cls, info: Mapping[str, Any], *, memory_override: int | None = None) -> ModelFacts:
        """From a ``model_info`` dict (the engine's ``model_info.json`` or the config's ``model_info``)."""
        num_params = info.get("num_params")
        if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params < 0:
            raise LaunchError(f"model info: 'num_params' must be a non-negative integer (got {num_params!r})")
        activation = float(info.get("activation_mem_per_gpu") or 0)
        # The engine measures at the profiling run's micro batch; DeepSpeed's own numbers are for 1.
        per = info.get("train_micro_batch_size_per_gpu") or 1
        memory = memory_override if memory_override is not None else info.get("memory_per_device")
        return cls(
            num_params=num_params,
            activation_bytes_per_sample=activation / per,
            memory_per_device=int(memory) if memory else None,
        )


def instantiation_bytes(
    *, num_params: int, stage: int, dp_world_size: int, half_precision: bool, mp_size: int = 1
) -> float:
    """Parameters + gradients + optimizer state per rank at ``stage`` (Note [zero memory])."""
    width = 2 if half_precision else 4
    params: float = num_params * width
    grads: float = num_params * width
    optimizer: float = num_params * (16 if half_precision else 8)
    if stage >= 1:
        optimizer /= dp_world_size
    if stage >= 2:
        grads /= dp_world_size
    if stage >= 3:
        params /= dp_world_size
    return (params + grads + optimizer) / mp_size


def required_bytes(
    facts: ModelFacts,
    *,
    stage: int,
    micro_batch: int,
    dp_world_size: int,
    half_precision: bool,
    mp_size: int = 1,
) -> float:
    """Everything one rank needs for ``stage`` at ``micro_batch`` samples per micro-step."""
    return (
        instantiation_bytes(
            num_params=facts.num_params,
            stage=stage,
            dp_world_size=dp_world_size,
            half_precision=half_precision,
            mp_size=mp_size,
        )
        + facts.activation_bytes_per_sample * micro_batch
    )


def largest_fitting_micro_batch(
    facts: ModelFacts, *, stage: int, dp_world_size: int, half_precision: bool, mp_size: int = 1
) -> int | None:
    """The largest micro batch ``stage`` fits in memory (None: unbounded, i.e. memory or activations unknown)."""
    if facts.memory_per_device is None or facts.activation_bytes_per_sample <= 0:
        return None
    room = facts.memory_per_device - instantiation_bytes(
        num_params=facts.num_params,
        stage=stage,
        dp_world_size=dp_world_size,
        half_precision=half_precision,
        mp_size=mp_size,
    )
    return max(0, int(room // facts.activation_bytes_per_sample))


def memory_prune_reason(
    facts: ModelFacts,
    *,
    stage: int,
    micro_batch: int,
    dp_world_size: int,
    half_precision: bool,
    mp_size: int = 1,
) -> str | None:
    """Why ``stage`` at ``micro_batch`` cannot fit (None when it fits or the budget is unknown)."""
    if facts.memory_per_device is None:
        return None
    need = required_bytes(
        facts,
        stage=stage,
        micro_batch=micro_batch,
        dp_world_size=dp_world_size,
        half_precision=half_precision,
        mp_size=mp_size,
    )
    if need <= facts.memory_per_device:
        return None
    need_text, have_text = format_bytes(need), format_bytes(facts.memory_per_device)
    if need_text == have_text:  # too close to tell apart once rounded
        need_text, have_text = f"{need:,.0f} B", f"{facts.memory_per_device:,} B"
    return f"needs {need_text} per rank by the ZeRO memory formulas, {have_text} available"


def format_bytes(value: float) -> str:
    """``1.5 GiB``-style sizes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
