"""``deepspeed.zero.Init``: ds_zero's construction context, fed a config validated by the engine's models.

Note [zero.Init config] in :mod:`ds_zero.stage3.zero_init`: ds_zero cannot import ds-engine, so it takes
an :class:`~ds_zero.stage3.zero_init.InitConfig`; this subclass is what ``deepspeed.zero.Init`` names. It
validates ``config_dict_or_path`` (a dict, a JSON path, base64 JSON, a ``DeepSpeedConfig`` or an object with
a ``config`` dict such as transformers' ``HfDeepSpeedConfig``) with the same pydantic models, the same
``"auto"`` resolution and the same error messages as ``deepspeed.initialize``, and passes the validated
values down (DeepSpeed's defaults included: ``offload_param.pin_memory`` is true).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigModel
from ds_engine.config.auto import resolve_auto
from ds_engine.config.errors import config_error_from
from ds_engine.config.loading import read_config_source
from ds_engine.config.unknown import strict_mode, validate_lenient
from ds_zero import Init as _ZeroInit
from ds_zero import InitConfig

# The sections zero.Init reads. Only they are validated here: transformers calls zero.Init from
# from_pretrained with the user's config before its Trainer has filled "auto" values elsewhere (scheduler
# steps, learning rate), which deepspeed.initialize validates later.
_SECTIONS = ("fp16", "bf16", "bfloat16", "zero_optimization")


def _without_auto(value: Any) -> Any:
    # An "auto" zero.Init does not read (e.g. reduce_bucket_size before the model exists) keeps its default.
    if isinstance(value, dict):
        return {k: _without_auto(v) for k, v in value.items() if v != "auto"}
    return value


def validated_model(source: Any) -> DeepSpeedConfigModel:
    """The sections of ``source`` that zero.Init reads, validated by the models, ``"auto"`` rules and
    error messages of ``deepspeed.initialize`` (unknown keys are accepted here and warned about by the engine)."""
    if isinstance(source, DeepSpeedConfig):
        return source.model
    as_dict = getattr(source, "config", None)  # transformers' HfDeepSpeedConfig and the like
    raw = read_config_source(as_dict if isinstance(as_dict, dict) else source)
    resolved, _notes = resolve_auto(_without_auto({k: v for k, v in raw.items() if k in _SECTIONS}))
    model, _unknown = validate_lenient(
        DeepSpeedConfigModel,
        resolved,
        strict=strict_mode(raw),
        renamed={"bf16": "bfloat16"},
        on_error=lambda exc: config_error_from(exc, DeepSpeedConfigModel),
    )
    return model  # type: ignore[return-value]


def init_config(source: Any) -> InitConfig:
    """What zero.Init needs from a DeepSpeed config (precision and ``offload_param``), validated."""
    model = validated_model(source)
    dtype = torch.bfloat16 if model.bf16.enabled else torch.float16 if model.fp16.enabled else torch.float32
    offload = model.zero_optimization.offload_param
    if offload is None:
        return InitConfig(dtype=dtype)
    return InitConfig(
        dtype=dtype,
        offload_device=offload.device,
        pin_memory=offload.pin_memory,
        nvme_path=str(offload.nvme_path or ""),
    )


class Init(_ZeroInit):
    """``deepspeed.zero.Init`` (DeepSpeed's signature): see the module doc."""

    def __init__(
        self,
        module: nn.Module | None = None,
        data_parallel_group: Any = None,
        mem_efficient_linear: bool = True,
        remote_device: Any = None,
        pin_memory: bool = False,
        config_dict_or_path: Any = None,
        config: Any = None,
        enabled: bool = True,
        dtype: torch.dtype | None = None,
        mpu: Any = None,
        zero_param_parallel_group: Any = None,
        zero_quantized_weights: bool = False,
        zero_quantized_nontrainable_weights: bool = False,
        sequence_data_parallel_group: Any = None,
        param_swapper: Any = None,
    ) -> None:
        source = config_dict_or_path if config_dict_or_path is not None else config
        validated = init_config(source) if enabled and source is not None else None
        super().__init__(
            module=module,
            data_parallel_group=data_parallel_group,
            mem_efficient_linear=mem_efficient_linear,
            remote_device=remote_device,
            pin_memory=pin_memory,
            config_dict_or_path=validated,
            enabled=enabled,
            dtype=dtype,
            mpu=mpu,
            zero_param_parallel_group=zero_param_parallel_group,
            zero_quantized_weights=zero_quantized_weights,
            zero_quantized_nontrainable_weights=zero_quantized_nontrainable_weights,
            sequence_data_parallel_group=sequence_data_parallel_group,
            param_swapper=param_swapper,
        )
