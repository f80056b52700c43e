"""AutoTP in the engine: the tensor-parallel size, splitting the model, and its full weights.

Note: [autotp in the engine] ``tensor_parallel.autotp_size`` (or a model ``deepspeed.tp_model_init`` already
split) gives the size of the mesh's tensor axis (ds_engine.topology). The engine splits the model
(ds_parallel.tensor) right after it takes it, before the initial broadcast over the data-parallel group and
before ZeRO, so both only ever see this rank's shards; ZeRO 1/2 then shards those over data-parallel ranks.
The gradient norm spans the whole model: split parameters' squares are summed over the tensor group,
replicated ones counted once (ds_zero.mp_norm). ZeRO 3 with AutoTP is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError, read_config_source
from ds_engine.config.loading import ConfigSource
from ds_parallel.tensor import TP_SIZE_ATTR, PartitionError, apply_autotp, full_state_dict, tensor_section

if TYPE_CHECKING:
    from ds_engine.engine import DeepSpeedEngine


def tensor_parallel_size(model: nn.Module, config: DeepSpeedConfig | ConfigSource) -> int:
    """The AutoTP size: the config's ``tensor_parallel.autotp_size``, or what ``tp_model_init`` applied.
    ``config`` is a validated config, or its source before validation (the mesh comes first)."""
    if isinstance(config, DeepSpeedConfig):
        config_tp = config.model.tensor_parallel.autotp_size
    else:
        config_tp = tensor_section(read_config_source(config)).get("autotp_size", 0)
    config_tp = config_tp if isinstance(config_tp, int) and config_tp > 1 else 1
    model_tp = getattr(model, TP_SIZE_ATTR, 1)
    if config_tp > 1 and model_tp > 1 and config_tp != model_tp:
        raise DeepSpeedConfigError(
            f"'tensor_parallel.autotp_size' {config_tp} differs from the size "
            f"deepspeed.tp_model_init split the model for ({model_tp})"
        )
    return max(config_tp, model_tp)


def split_model(engine: DeepSpeedEngine) -> None:
    """Split ``engine.module`` over the engine's tensor group (no-op without AutoTP or when already split)."""
    if engine.tp_world_size <= 1:
        return
    if engine._config.zero_optimization.stage == 3:
        raise DeepSpeedConfigError(
            "'tensor_parallel.autotp_size' > 1 with ZeRO stage 3 is not supported here; use stage 0, 1 or 2"
        )
    section = engine._config.model.tensor_parallel
    try:
        apply_autotp(engine.module, engine.tp_world_size, section.partition_config, tp_group=engine.tp_group)
    except PartitionError as exc:
        raise DeepSpeedConfigError(str(exc)) from None


def attach_norm(engine: DeepSpeedEngine) -> None:
    """Make the trainer's gradient norm (clipping, overflow, ``get_global_grad_norm``) span the split model."""
    if engine.tp_world_size <= 1 or engine.optimizer is None:
        return
    from ds_zero.tensor_norm import tensor_parallel_norm

    engine.optimizer.norm_fn = tensor_parallel_norm(engine.optimizer, engine.tp_group)


def consolidated_state_dict(
    engine: DeepSpeedEngine, exclude_frozen_parameters: bool = False
) -> dict[str, Any] | None:
    """The full (unsplit) module state dict in the training dtype on global rank 0, None elsewhere.
    Every rank must call it (all-gathers over each tensor group)."""
    state = full_state_dict(
        engine.module, engine.module_state_dict(exclude_frozen_parameters=exclude_frozen_parameters)
    )
    return {k: v.detach().cpu() for k, v in state.items()} if engine.global_rank == 0 else None
