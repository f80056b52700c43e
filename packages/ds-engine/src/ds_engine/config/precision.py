"""Mixed-precision sections: ``fp16``, ``bf16`` (old name ``bfloat16``), ``amp``, ``torch_autocast``,
``data_types``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from ds_engine.config.base import ConfigModel, FeatureGate
from ds_engine.config.effects import Effect, applied, no_effect, refused

DtypeName = Literal["fp32", "fp16", "bf16", "float32", "float16", "bfloat16", "half", "float"]


class FP16Config(ConfigModel):
    """``fp16``: float16 weights and activations with fp32 master weights and loss scaling."""

    enabled: bool = False
    """Train with float16 model weights (fp32 master weights live in the optimizer)."""

    auto_cast: bool = False
    """Cast floating-point inputs of ``forward`` to float16."""

    loss_scale: float = Field(0.0, ge=0.0)
    """Static loss scale; 0 selects dynamic loss scaling."""

    initial_scale_power: int = Field(16, ge=0, le=64)
    """Dynamic loss scaling starts at ``2 ** initial_scale_power``."""

    loss_scale_window: int = Field(1000, gt=0)
    """Overflow-free steps after which the dynamic scale doubles."""

    hysteresis: int = Field(2, ge=1)
    """Overflows tolerated before the scale is halved (delayed shift)."""

    consecutive_hysteresis: bool = False
    """Refill the hysteresis budget on every overflow-free step."""

    min_loss_scale: float = Field(1.0, gt=0.0)
    """The dynamic loss scale never drops below this."""

    fp16_master_weights_and_grads: bool = False
    """Keep master weights in fp16 (DeepSpeed allows it only with its CPU Adam). Not supported yet."""

    @field_validator("loss_scale", mode="before")
    @classmethod
    def _finite_scale(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("must be a number, not a boolean")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("must be finite (0 selects dynamic loss scaling)")
        return value

    @property
    def dynamic(self) -> bool:
        """Whether the loss scale adapts to overflows."""
        return self.loss_scale == 0


class BF16Config(ConfigModel):
    """``bf16`` (also read from the old key ``bfloat16``): bfloat16 weights, fp32 master weights."""

    enabled: bool = False
    """Train with bfloat16 model weights."""

    immediate_grad_update: bool = False
    """Apply gradients to the fp32 master copy as they arrive. Accepted; stage 0 always accumulates in fp32."""

    check_grad_overflow: bool = True
    """Skip the optimizer step when a gradient is inf or NaN."""

    bf16_master_weights_and_grads: bool = False
    """Keep master weights and gradients in bfloat16, with no fp32 copy (ZeRO stages 1-3; Note
    [low-precision masters] in ``ds_zero.low_precision_masters``)."""

    bf16_optimizer_states: bool = False
    """Keep optimizer states in bfloat16 too (needs ``bf16_master_weights_and_grads``); otherwise they are
    fp32 and the step computes in fp32."""

    @model_validator(mode="after")
    def _states_need_master(self) -> BF16Config:
        if self.bf16_optimizer_states and not self.bf16_master_weights_and_grads:
            raise ValueError("bf16_optimizer_states needs bf16_master_weights_and_grads")
        return self


class AmpConfig(FeatureGate):
    """``amp``: NVIDIA Apex AMP. Apex is not used by this project; only ``enabled: false`` is accepted."""

    opt_level: str | None = None
    """Apex optimisation level (``O0``-``O3``)."""
    cast_model_type: str | None = None
    """Apex: the dtype the model is cast to."""
    patch_torch_functions: bool | None = None
    """Apex: patch torch functions to cast their inputs."""
    keep_batchnorm_fp32: bool | str | None = None
    """Apex: keep batch-norm weights in fp32."""
    master_weights: bool | None = None
    """Apex: keep fp32 master weights."""
    loss_scale: float | str | None = None
    """Apex: static scale or ``"dynamic"``."""
    cast_model_outputs: str | None = None
    """Apex: cast model outputs to this dtype."""
    num_losses: int | None = None
    """Apex: number of losses scaled separately."""
    verbosity: int | None = None
    """Apex: log verbosity."""
    min_loss_scale: float | None = None
    """Apex: dynamic-scale floor."""
    max_loss_scale: float | None = None
    """Apex: dynamic-scale ceiling."""


# DeepSpeed reads torch_autocast.dtype through its DtypeEnum, which takes these spellings (DeepSpeedExamples
# writes "torch.bfloat16"); a torch.dtype object in a dict config is read as its str() ("torch.bfloat16").
AutocastDtypeName = Literal[
    "fp16",
    "float16",
    "half",
    "torch.float16",
    "bf16",
    "bfloat16",
    "torch.bfloat16",
    "fp32",
    "float32",
    "float",
    "torch.float32",
    "int8",
    "torch.int8",
]


class TorchAutocastConfig(ConfigModel):
    """``torch_autocast``: keep fp32 weights and run forward under ``torch.autocast`` (Note [torch autocast] in
    :mod:`ds_engine.autocast`)."""

    enabled: bool = False
    """Run forward under ``torch.autocast``."""

    dtype: AutocastDtypeName | None = None
    """The autocast dtype, in any of DeepSpeed's spellings (``bf16``, ``bfloat16``, ``torch.bfloat16``, ...)."""

    @field_validator("dtype", mode="before")
    @classmethod
    def _torch_dtype_object(cls, value: object) -> object:
        # a dict config may hold torch.bfloat16 itself; its str() is one of the spellings above
        return str(value) if type(value).__name__ == "dtype" and type(value).__module__ == "torch" else value

    lower_precision_safe_modules: list[str] | None = None
    """Dotted module classes whose parameters are tagged with the autocast dtype as ``comm_dtype`` (default:
    ``torch.nn.Linear`` and ``Conv1d/2d/3d``). Gradients are still reduced in fp32 here (more exact)."""


class DataTypesConfig(ConfigModel):
    """``data_types``: dtypes of gradient accumulation, parameters and buffers."""

    grad_accum_dtype: DtypeName | None = None
    """Dtype that gradients accumulate in across micro-batches (DeepSpeed's default: the model's dtype),
    followed at every stage. Unset, each stage accumulates where it keeps gradients: stage 0 in the fp32
    master gradients, stages 1-2 in the model's dtype, stage 3 in the shard (master) dtype; under fp16/bf16
    stages 0 and 3 refuse a low-precision value. Note [gradient dtypes] in ds_zero.dtypes."""

    param_dtype: DtypeName | None = None
    """Dtype of the model parameters. Only a value matching the fp16/bf16 sections is accepted."""

    buffer_dtype: DtypeName | None = None
    """Dtype of the model buffers (None keeps them as loaded). Not supported yet."""

    keep_in_fp32_modules: Literal["auto"] | list[str] = "auto"
    """Name patterns of modules kept in fp32 under fp16/bf16 ("auto": none). Not supported yet."""


# Note [key effects] in ds_engine.config.effects.
_LOSS_SCALE = "ds_engine.zero_policy:_loss_scale"
_MIXED = "ds_engine.zero_policy:_mixed_precision"
FP16_KEYS: dict[str, Effect] = {
    "enabled": applied("ds_engine.zero_policy:model_dtype"),
    "auto_cast": applied("ds_engine.engine:DeepSpeedEngine.forward"),
    "loss_scale": applied(_LOSS_SCALE),
    "initial_scale_power": applied(_LOSS_SCALE),
    "loss_scale_window": applied(_LOSS_SCALE),
    "hysteresis": applied(_LOSS_SCALE),
    "consecutive_hysteresis": applied(_LOSS_SCALE),
    "min_loss_scale": applied(_LOSS_SCALE),
    "fp16_master_weights_and_grads": refused(
        "fp16 master weights are not built", when=lambda s: s.fp16_master_weights_and_grads
    ),
}
BF16_KEYS: dict[str, Effect] = {
    "enabled": applied("ds_engine.zero_policy:model_dtype"),
    "immediate_grad_update": no_effect(
        "gradients are accumulated where each stage keeps them, as they arrive "
        "(Note [gradient dtypes] in ds_zero.dtypes); there is no deferred update "
        "to switch"
    ),
    "check_grad_overflow": applied("ds_engine.zero_policy:policy_from_config"),
    "bf16_master_weights_and_grads": applied(_MIXED),
    "bf16_optimizer_states": applied(_MIXED),
}
_APEX = "Apex AMP is not used ('amp.enabled' is refused)"
AMP_KEYS: dict[str, Effect] = {name: no_effect(_APEX) for name in AmpConfig.model_fields if name != "enabled"}
AMP_KEYS["enabled"] = refused(
    "Apex AMP is not used; use fp16, bf16 or torch_autocast", when=lambda s: s.enabled
)
_ACCESSORS = "ds_engine.accessors:EngineAccessors"
TORCH_AUTOCAST_KEYS: dict[str, Effect] = {
    "enabled": applied(f"{_ACCESSORS}.torch_autocast_enabled"),
    "dtype": applied(f"{_ACCESSORS}.torch_autocast_dtype"),
    "lower_precision_safe_modules": applied(f"{_ACCESSORS}.torch_autocast_lower_precision_safe_modules"),
}
DATA_TYPES_KEYS: dict[str, Effect] = {
    "grad_accum_dtype": applied(
        _MIXED,
        "ds_zero.dtypes:grad_dtypes#accum_dtype",
        why="every stage; under fp16/bf16 stages 0 and 3 accumulate in fp32 and refuse a lower one "
        "(Note [gradient dtypes] in ds_zero.dtypes)",
    ),
    "param_dtype": applied(_MIXED, why="must match the fp16/bf16 sections"),
    "buffer_dtype": refused("casting buffers is not built", when=lambda s: s.buffer_dtype is not None),
    "keep_in_fp32_modules": refused(
        "keeping modules in fp32 is not built", when=lambda s: s.keep_in_fp32_modules != "auto"
    ),
}
TABLES: dict[type[BaseModel], tuple[str, Mapping[str, Effect]]] = {
    FP16Config: ("fp16", FP16_KEYS),
    BF16Config: ("bf16", BF16_KEYS),
    AmpConfig: ("amp", AMP_KEYS),
    TorchAutocastConfig: ("torch_autocast", TORCH_AUTOCAST_KEYS),
    DataTypesConfig: ("data_types", DATA_TYPES_KEYS),
}
