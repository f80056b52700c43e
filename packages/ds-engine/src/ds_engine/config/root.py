"""The whole DeepSpeed config: the top-level model, unsupported-feature checks, and ``DeepSpeedConfig``."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ds_engine.config.auto import resolve_auto
from ds_engine.config.base import ConfigModel
from ds_engine.config.batch import BatchSizes, reconcile_batch
from ds_engine.config.effects import no_effect_settings, refused_settings
from ds_engine.config.errors import DeepSpeedConfigError, config_error_from
from ds_engine.config.features import (
    ActivationCheckpointingConfig,
    AioConfig,
    AutotuningConfig,
    CheckpointConfig,
    CompileConfig,
    DataEfficiencyConfig,
    EigenvalueConfig,
    ElasticityConfig,
    HybridEngineConfig,
    LegacyCurriculumConfig,
    NebulaConfig,
    PipelineConfig,
    ProgressiveLayerDropConfig,
    TensorParallelConfig,
)
from ds_engine.config.loading import read_config_source
from ds_engine.config.monitoring import (
    CometConfig,
    CommsLoggerConfig,
    CSVMonitorConfig,
    FlopsProfilerConfig,
    TensorBoardConfig,
    TimersConfig,
    WandbConfig,
)
from ds_engine.config.optim import OptimizerConfig, SchedulerConfig
from ds_engine.config.precision import (
    AmpConfig,
    BF16Config,
    DataTypesConfig,
    FP16Config,
    TorchAutocastConfig,
)
from ds_engine.config.unknown import strict_mode, validate_lenient, warn_unknown
from ds_engine.config.zero import ZeroConfig
from ds_engine.elasticity.batch import elastic_batch_sizes

logger = logging.getLogger("ds_engine")

CommDtype = Literal["fp16", "bf16", "fp32", "float16", "bfloat16", "float32", "half", "float"]


class DeepSpeedConfigModel(ConfigModel):
    """Every top-level key of a DeepSpeed config (``ds_config.json``)."""

    strict: bool = False
    """(This project's extension.) Make unknown keys errors instead of warnings (so does the environment
    variable ``DS_CONFIG_STRICT=1``). By default an unknown key is accepted, as DeepSpeed accepts it, and
    logged once at WARNING with its key path and the closest valid key. DeepSpeed ignores this key."""
    train_batch_size: int | None = Field(None, gt=0)
    """Global batch per optimizer step: micro batch * accumulation * data-parallel ranks."""
    train_micro_batch_size_per_gpu: int | None = Field(None, gt=0)
    """Samples per rank per forward/backward."""
    gradient_accumulation_steps: int | None = Field(None, gt=0)
    """Micro-batches accumulated before each optimizer step."""
    steps_per_print: int | None = Field(None, gt=0)
    """Log step, loss, LR, loss scale, samples/s and TFLOP/s every this many optimizer steps (rank 0);
    null or ``Infinity`` never logs."""
    wall_clock_breakdown: bool = False
    """Time forward, backward and step, and log the breakdown with the progress line."""
    memory_breakdown: bool = False
    """Log accelerator memory with the progress line."""
    dump_state: bool = False
    """Print the resolved config at start-up (rank 0)."""
    optimizer: OptimizerConfig | None = None
    """Optimizer built when the client passes none."""
    scheduler: SchedulerConfig | None = None
    """LR schedule built when the client passes none."""
    fp16: FP16Config = Field(default_factory=FP16Config)
    """float16 mixed precision."""
    bf16: BF16Config = Field(default_factory=BF16Config)
    """bfloat16 mixed precision (also read from ``bfloat16``)."""
    amp: AmpConfig = Field(default_factory=AmpConfig)
    """Apex AMP (not used here)."""
    torch_autocast: TorchAutocastConfig = Field(default_factory=TorchAutocastConfig)
    """``torch.autocast`` around forward."""
    data_types: DataTypesConfig = Field(default_factory=DataTypesConfig)
    """Dtypes of gradient accumulation, parameters and buffers."""
    zero_optimization: ZeroConfig = Field(default_factory=ZeroConfig)
    """ZeRO stage and options (``true``/``false`` mean stage 1/0, DeepSpeed's old form)."""
    zero_allow_untested_optimizer: bool = False
    """Allow a client optimizer that ZeRO has not been tested with."""
    zero_force_ds_cpu_optimizer: bool = True
    """With optimizer offload, require DeepSpeed's CPU optimizer."""
    gradient_clipping: float = Field(1.0, ge=0.0)
    """Clip gradients to this global L2 norm; 0 disables clipping (DeepSpeed's default is 1.0)."""
    max_consecutive_skipped_steps: int = Field(50, ge=0)
    """(This project's extension.) Stop with an error after this many optimizer steps in a row were
    skipped because the gradients held inf or NaN (0: never stop). Every precision skips such steps
    (fp16's loss-scale overflows included); a run that keeps skipping is not training. DeepSpeed ignores
    unknown top-level keys, so configs stay portable."""
    communication_data_type: CommDtype | None = None
    """Dtype gradients are averaged in across ranks, at every ZeRO stage (default, as in DeepSpeed: the model's
    dtype, i.e. bf16 under bf16 and fp16 under fp16; Note [gradient dtypes] in ds_zero.dtypes)."""
    seq_parallel_communication_data_type: CommDtype = "fp32"
    """Dtype of sequence-parallel communication."""
    prescale_gradients: bool = False
    """Divide gradients before the all-reduce instead of after."""
    gradient_predivide_factor: float = Field(1.0, gt=0.0)
    """Divide gradients by this before the all-reduce and by world_size/factor after."""
    gradient_allreduce_op: Literal["mean", "sum"] = "mean"
    """Average (mean) or sum gradients across data-parallel ranks."""
    sparse_gradients: bool = False
    """Reduce embedding gradients sparsely. Not supported yet."""
    disable_allgather: bool = False
    """Legacy flag of the old stage-1 implementation."""
    dataloader_drop_last: bool = False
    """Drop the last incomplete batch of the engine's data loader."""
    managed_gradient_accumulation: bool = True
    """The engine counts micro-steps to find accumulation boundaries (false is not supported yet)."""
    disable_python_gc: int | bool = False
    """Disable Python's automatic garbage collection during training."""
    log_level: str | None = None
    """Log level of the engine's logger."""
    use_data_before_expert_parallelism: bool = False
    """Expert-parallel topology order."""
    vocabulary_size: int | None = None
    """Vocabulary size, used for padding by some features."""
    sequence_parallel_size: int = Field(1, ge=1)
    """Sequence-parallel (Ulysses) degree: the world splits into groups of this many ranks that share each
    sample's sequence; batch sizes count the data-parallel ranks ``world / sequence_parallel_size``."""
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpoint validation and writing."""
    activation_checkpointing: ActivationCheckpointingConfig = Field(
        default_factory=ActivationCheckpointingConfig
    )
    """Options of ``deepspeed.checkpointing``."""
    aio: AioConfig = Field(default_factory=AioConfig)
    """Asynchronous I/O for NVMe offload."""
    tensorboard: TensorBoardConfig = Field(default_factory=TensorBoardConfig)
    """TensorBoard events."""
    csv_monitor: CSVMonitorConfig = Field(default_factory=CSVMonitorConfig)
    """CSV events."""
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    """Weights & Biases events."""
    comet: CometConfig = Field(default_factory=CometConfig)
    """Comet events."""
    comms_logger: CommsLoggerConfig = Field(default_factory=CommsLoggerConfig)
    """Collective-communication log."""
    flops_profiler: FlopsProfilerConfig = Field(default_factory=FlopsProfilerConfig)
    """Per-module FLOPs profiler."""
    timers: TimersConfig = Field(default_factory=TimersConfig)
    """Throughput timer."""
    elasticity: ElasticityConfig = Field(default_factory=ElasticityConfig)
    """Elastic batch-size selection."""
    autotuning: AutotuningConfig = Field(default_factory=AutotuningConfig)
    """Autotuner."""
    data_efficiency: DataEfficiencyConfig = Field(default_factory=DataEfficiencyConfig)
    """Data-efficiency library."""
    curriculum_learning: LegacyCurriculumConfig = Field(default_factory=LegacyCurriculumConfig)
    """Legacy curriculum learning."""
    compression_training: dict[str, Any] = Field(default_factory=dict)
    """Compression techniques (see Note [loose-sections]); none may be enabled yet."""
    quantize_training: dict[str, Any] = Field(default_factory=dict)
    """MoQ quantize-aware training (see Note [loose-sections]); must stay disabled."""
    weight_quantization: dict[str, Any] | None = None
    """Inference weight quantization (see Note [loose-sections]); must stay disabled."""
    sparse_attention: dict[str, Any] | None = None
    """Options read by ``SparseSelfAttention`` modules (see Note [loose-sections])."""
    expert_parallel: dict[str, Any] | None = None
    """AutoEP expert parallelism (see Note [loose-sections]); must stay disabled."""
    datastates_ckpt: dict[str, Any] | None = None
    """DataStates asynchronous checkpointing (see Note [loose-sections]); must stay disabled."""
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    """PipelineEngine options."""
    hybrid_engine: HybridEngineConfig = Field(default_factory=HybridEngineConfig)
    """RLHF hybrid engine."""
    nebula: NebulaConfig = Field(default_factory=NebulaConfig)
    """Nebula checkpoint service."""
    progressive_layer_drop: ProgressiveLayerDropConfig = Field(default_factory=ProgressiveLayerDropConfig)
    """Progressive layer drop."""
    eigenvalue: EigenvalueConfig = Field(default_factory=EigenvalueConfig)
    """Hessian eigenvalue estimation."""
    compile: CompileConfig = Field(default_factory=CompileConfig)
    """DeepCompile."""
    tensor_parallel: TensorParallelConfig = Field(default_factory=TensorParallelConfig)
    """AutoTP."""

    @model_validator(mode="before")
    @classmethod
    def _old_spellings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "bfloat16" in data:
            if "bf16" in data:
                raise ValueError("both 'bf16' and its old name 'bfloat16' are given; keep 'bf16'")
            data["bf16"] = data.pop("bfloat16")
        zero = data.get("zero_optimization")
        if isinstance(zero, bool):
            data["zero_optimization"] = {"stage": 1 if zero else 0}
        return data

    @field_validator("steps_per_print", mode="before")
    @classmethod
    def _infinite_means_never(cls, value: Any) -> Any:
        if isinstance(value, float) and math.isinf(value) and value > 0:
            return None
        return value

    @model_validator(mode="after")
    def _one_precision(self) -> DeepSpeedConfigModel:
        if self.fp16.enabled and self.bf16.enabled:
            raise ValueError("fp16 and bf16 cannot both be enabled")
        return self


_UNSUPPORTED = "is not supported yet by this project; set it to false or remove it"


def unsupported_features(model: DeepSpeedConfigModel) -> list[str]:
    """Each switched-on feature this project does not build yet, as ``'key.path': reason``. The refusals
    come from the key-effect tables of every section (Note [key effects] in ds_engine.config.effects)."""
    return [f"'{key}' {_UNSUPPORTED}" for key in refused_settings(model)]


_ZERO_PLUS_PLUS = (
    "zero_quantized_weights",
    "zero_quantized_nontrainable_weights",
    "zero_quantized_gradients",
)


def zero_plus_plus(model: DeepSpeedConfigModel) -> list[str]:
    """The ZeRO++ keys switched on (``zero_hpz_partition_size`` > 1 or a ``zero_quantized_*`` flag)."""
    zero = model.zero_optimization
    on = [key for key in _ZERO_PLUS_PLUS if getattr(zero, key)]
    return (["zero_hpz_partition_size"] if zero.zero_hpz_partition_size > 1 else []) + on


def ignored_settings(model: DeepSpeedConfigModel) -> list[str]:
    """Settings that are accepted but have no effect with this config, each as a warning sentence.

    ZeRO++ keys below stage 3: DeepSpeed builds ZeRO++ only for stage 3 and ignores them otherwise
    (open-instruct's default config sends ``zero_hpz_partition_size: 8`` at stage 0)."""
    stage = model.zero_optimization.stage
    no_effect = no_effect_settings(model)  # Note [key effects]
    if stage == 3:
        return no_effect
    return [
        f"'zero_optimization.{key}' takes effect only at ZeRO stage 3; ignored at stage {stage}"
        for key in zero_plus_plus(model)
    ] + no_effect


def _global_rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover - torch is a declared dependency
        pass
    return int(os.environ.get("RANK", "0"))


def _default_world_size() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
    except ImportError:  # pragma: no cover - torch is a declared dependency
        pass
    return int(os.environ.get("WORLD_SIZE", "1"))


class DeepSpeedConfig:
    """A validated DeepSpeed config with reconciled batch sizes.

    ``DeepSpeedConfig(config, mpu=None, *, world_size=None)``: ``config`` is a dict, a JSON path or base64
    JSON. Sections are read as attributes of :attr:`model` (``cfg.zero_optimization.stage``,
    ``cfg.fp16.enabled``); DeepSpeed's most-read attribute names are kept too.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | Mapping[str, Any],
        mpu: Any = None,
        mesh_device: Any = None,
        *,
        world_size: int | None = None,
    ) -> None:
        raw = read_config_source(config)
        self._param_dict: dict[str, Any] = raw
        resolved, notes = resolve_auto(raw)
        for note in notes:
            logger.debug("config %s", note)
        rank = _global_rank()
        model, unknown = validate_lenient(  # Note [unknown keys]
            DeepSpeedConfigModel,
            resolved,
            strict=strict_mode(raw),
            renamed={"bf16": "bfloat16"},
            on_error=lambda exc: config_error_from(exc, DeepSpeedConfigModel),
        )
        self.model: DeepSpeedConfigModel = model  # type: ignore[assignment]
        self.unknown_keys: list[str] = [k.dotted for k in unknown if not k.is_comment]
        """Full paths of the unknown keys that were accepted (and warned about)."""
        warn_unknown(unknown, rank=rank)
        for text in ignored_settings(self.model):
            if rank == 0:
                logger.warning("DeepSpeed config: %s", text)
        problems = unsupported_features(self.model)
        if problems:
            raise DeepSpeedConfigError("; ".join(problems))
        if world_size is None:
            world_size = mpu.get_data_parallel_world_size() if mpu is not None else _default_world_size()
        self.world_size = world_size
        if self.model.elasticity.enabled:
            self.batch: BatchSizes = elastic_batch_sizes(
                config=self.model.elasticity, ds_config=resolved, world_size=world_size
            )
        else:
            self.batch = reconcile_batch(
                train_batch_size=self.model.train_batch_size,
                micro_batch_per_gpu=self.model.train_micro_batch_size_per_gpu,
                gradient_accumulation_steps=self.model.gradient_accumulation_steps,
                dp_world_size=world_size,
            )

    def __getattr__(self, name: str) -> Any:
        # Sections and scalar keys read straight off the validated model: cfg.fp16.enabled.
        model = self.__dict__.get("model")
        if model is not None and name in DeepSpeedConfigModel.model_fields:
            return getattr(model, name)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    # DeepSpeed's attribute names that clients read.
    @property
    def train_batch_size(self) -> int:
        """Global batch per optimizer step."""
        return self.batch.train_batch_size

    @property
    def train_micro_batch_size_per_gpu(self) -> int:
        """Samples per rank per micro-step."""
        return self.batch.micro_batch_per_gpu

    @property
    def gradient_accumulation_steps(self) -> int:
        """Micro-steps per optimizer step."""
        return self.batch.gradient_accumulation_steps

    @property
    def elasticity_enabled(self) -> bool:
        """Whether the ``elasticity`` section chose the batch sizes."""
        return self.model.elasticity.enabled

    @property
    def zero_config(self) -> ZeroConfig:
        """The ``zero_optimization`` section."""
        return self.model.zero_optimization

    @property
    def zero_optimization_stage(self) -> int:
        """The ZeRO stage (0-3)."""
        return int(self.model.zero_optimization.stage)

    @property
    def zero_enabled(self) -> bool:
        """Whether a ZeRO stage above 0 is selected."""
        return self.zero_optimization_stage > 0

    @property
    def fp16_enabled(self) -> bool:
        """Whether fp16 training is on."""
        return self.model.fp16.enabled

    @property
    def bfloat16_enabled(self) -> bool:
        """Whether bf16 training is on."""
        return self.model.bf16.enabled

    @property
    def config_dict(self) -> dict[str, Any]:
        """The config as the user gave it (``"auto"`` unresolved)."""
        return self._param_dict
