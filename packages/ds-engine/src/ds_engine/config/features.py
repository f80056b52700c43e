"""Sections for features outside the training step: checkpoints, activation checkpointing, async I/O,
elasticity, autotuning, and the DeepSpeed features this project does not build yet (accepted only while
disabled).

Note: [loose-sections] A few DeepSpeed sections are large trees consumed only by features that are not
built here (data-efficiency samplers, compression, sparse attention). Their top-level keys are validated;
their inner trees are kept as given, and :func:`ds_engine.config.root.check_unsupported` refuses any of
them that switches its feature on.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, model_validator

from ds_engine.config.base import ConfigModel, FeatureGate
from ds_launch.autotuning_config import AutotuningConfig as AutotuningConfig  # owned by the autotuner


class CheckpointWriterConfig(ConfigModel):
    """``checkpoint.writer``: DeepSpeed's fast checkpoint writer options."""

    type: str = "MOCK"
    """Writer type (DeepSpeed: MOCK, PYTHON, FAST). Files are always written atomically here."""
    io_buffer_size: int = 1_000_000_000
    """I/O buffer size in bytes."""
    io_buffer_double: bool = True
    """Double-buffer I/O."""
    show_statistics: bool = False
    """Print write statistics."""
    data_parallel: str = "replica"
    """Which data-parallel ranks write (replica, socket, machine)."""
    decoupled: bool = False
    """Write checkpoints in the background."""
    io_multiplier: int = 1
    """I/O parallelism multiplier."""


class ParallelWriteConfig(ConfigModel):
    """``checkpoint.parallel_write``."""

    pipeline_stage: bool = False
    """Pipeline stages write in parallel."""


class CheckpointConfig(ConfigModel):
    """``checkpoint``: how checkpoints are validated and written."""

    tag_validation: Literal["Ignore", "Warn", "Fail", "IGNORE", "WARN", "FAIL", "ignore", "warn", "fail"] = (
        "Warn"
    )
    """What a tag that differs across ranks does: Ignore, Warn (default) or Fail."""
    load_universal: bool = False
    """Load a universal checkpoint. This project's checkpoints reshard without conversion; accepted."""
    use_node_local_storage: bool = False
    """Each node writes to its own local storage (local rank 0 writes the shared files)."""
    parallel_write: ParallelWriteConfig = Field(default_factory=ParallelWriteConfig)
    """Parallel writes across pipeline stages."""
    checkpoint_serialization: bool = True
    """Use torch's zip serialization (always on here)."""
    writer: CheckpointWriterConfig | None = None
    """Writer options."""
    rendezvous_timeout: float = Field(300.0, gt=0.0)
    """(This project's extension.) Seconds every rank may take to reach ``save_checkpoint`` or
    ``load_checkpoint``; a rank that never arrives turns into a clear error on the others instead of a
    hang. DeepSpeed ignores unknown keys in this section, so configs stay portable."""

    @property
    def tag_validation_mode(self) -> str:
        """``IGNORE``, ``WARN`` or ``FAIL``."""
        return self.tag_validation.upper()


class ActivationCheckpointingConfig(ConfigModel):
    """``activation_checkpointing``: options of ``deepspeed.checkpointing``."""

    partition_activations: bool = False
    """Partition checkpointed activations across model-parallel ranks."""
    contiguous_memory_optimization: bool = False
    """Copy checkpoints into a contiguous buffer."""
    cpu_checkpointing: bool = False
    """Keep checkpointed activations in CPU memory."""
    number_checkpoints: int | None = None
    """Number of checkpoints (for the contiguous buffer)."""
    synchronize_checkpoint_boundary: bool = False
    """Synchronize the accelerator at each checkpoint boundary."""
    profile: bool = False
    """Time checkpoint forward/recompute."""


class AioConfig(ConfigModel):
    """``aio``: asynchronous I/O for NVMe offload."""

    block_size: int = Field(1_048_576, gt=0)
    """I/O block size in bytes."""
    queue_depth: int = Field(8, gt=0)
    """I/O queue depth."""
    intra_op_parallelism: int = Field(
        1, gt=0, validation_alias=AliasChoices("intra_op_parallelism", "thread_count")
    )
    """I/O threads per operation (older configs call it ``thread_count``)."""
    single_submit: bool = False
    """Submit requests one at a time."""
    overlap_events: bool = True
    """Overlap submission and completion."""
    use_gds: bool = False
    """Use GPUDirect Storage."""


PositiveStrictInt = Annotated[int, Field(strict=True, gt=0)]
ELASTICITY_VERSIONS = (0.1, 0.2)


class ElasticityConfig(ConfigModel):
    """``elasticity``: choose a global batch that many world sizes can run, and override the batch keys
    with it (see :mod:`ds_engine.elasticity`)."""

    enabled: bool = False
    """Let elasticity choose ``train_batch_size``, the micro batch and the accumulation steps."""
    max_train_batch_size: PositiveStrictInt | None = None
    """Largest global batch allowed (required when enabled)."""
    micro_batch_sizes: list[PositiveStrictInt] | None = None
    """Micro batches per GPU the job may use (required when enabled)."""
    min_gpus: int = Field(1, ge=1)
    """Fewest accelerators the job may run on."""
    max_gpus: int = Field(10_000, ge=1)
    """Most accelerators the job may run on."""
    min_time: int = Field(0, ge=0)
    """Minutes a scheduler should let the job run before scaling it (0: unknown)."""
    version: float = 0.2
    """Elasticity algorithm: 0.1 (GPU counts) or 0.2 (whole nodes, model parallelism)."""
    ignore_non_elastic_batch_info: bool = False
    """Silently ignore batch keys given outside this section (otherwise they are an error)."""
    prefer_larger_batch: bool = True
    """Among equally elastic batches, take the larger one (and the larger micro batch)."""
    num_gpus_per_node: int = Field(1, ge=1)
    """Accelerators per node (version 0.2)."""
    model_parallel_size: int = Field(1, ge=1)
    """Model-parallel degree (version 0.2 only)."""

    @model_validator(mode="after")
    def _consistent(self) -> ElasticityConfig:
        if self.version not in ELASTICITY_VERSIONS:
            raise ValueError(
                f"elasticity version {self.version} is not supported; this runtime has versions "
                f"{', '.join(map(str, ELASTICITY_VERSIONS))}"
            )
        if self.max_gpus < self.min_gpus:
            raise ValueError(f"min_gpus {self.min_gpus} is larger than max_gpus {self.max_gpus}")
        if self.model_parallel_size > 1 and self.version != 0.2:
            raise ValueError(
                f"elasticity version {self.version} does not support model parallelism "
                f"(model_parallel_size {self.model_parallel_size}); use version 0.2"
            )
        if self.enabled:
            missing = [k for k in ("max_train_batch_size", "micro_batch_sizes") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"elasticity is enabled but {' and '.join(missing)} is missing")
            if not self.micro_batch_sizes:
                raise ValueError("elasticity is enabled but micro_batch_sizes is empty")
        return self


class DataEfficiencyConfig(FeatureGate):
    """``data_efficiency``: curriculum data sampling and random-LTD routing. Not supported yet."""

    seed: int = 1234
    """Seed of the data-efficiency samplers."""
    data_sampling: dict[str, Any] = Field(default_factory=dict)
    """Curriculum sampling tree (see Note [loose-sections])."""
    data_routing: dict[str, Any] = Field(default_factory=dict)
    """Random-LTD routing tree (see Note [loose-sections])."""

    def switched_on(self) -> bool:
        """Whether this section, or one of its trees, turns a feature on."""
        return bool(self.enabled or self.data_sampling.get("enabled") or self.data_routing.get("enabled"))


class LegacyCurriculumConfig(FeatureGate):
    """``curriculum_learning`` (legacy form). Not supported yet (enabled must be false)."""

    curriculum_type: str | None = None
    """Metric the curriculum follows (e.g. seqlen)."""
    min_difficulty: int | None = None
    """Starting difficulty."""
    max_difficulty: int | None = None
    """Final difficulty."""
    schedule_type: str | None = None
    """fixed_linear, fixed_root, fixed_discrete or custom."""
    schedule_config: dict[str, Any] = Field(default_factory=dict)
    """Schedule parameters."""


class HybridEngineConfig(FeatureGate):
    """``hybrid_engine``: RLHF train/generate switching. Not supported yet (enabled must be false)."""

    max_out_tokens: int = Field(512, gt=0)
    """Most generated tokens."""
    inference_tp_size: int = 1
    """Tensor-parallel degree for generation."""
    release_inference_cache: bool = False
    """Free the inference cache after generation."""
    pin_parameters: bool = True
    """Pin gathered parameters."""
    tp_gather_partition_size: int = 8
    """Tensor-parallel gather partition size."""
    enable_cuda_graph: bool = False
    """Capture generation in CUDA graphs."""


class PipelineConfig(ConfigModel):
    """``pipeline``: options of DeepSpeed's PipelineEngine (only read with a PipelineModule)."""

    stages: int | Literal["auto"] = "auto"
    """Pipeline stages."""
    partition: str = "best"
    """Layer partition method."""
    seed_layers: bool = False
    """Seed each layer differently."""
    activation_checkpoint_interval: int = 0
    """Layers between activation checkpoints."""
    pipe_partitioned: bool = True
    """Partition activations sent between stages."""
    grad_partitioned: bool = True
    """Partition gradients sent between stages."""


class NebulaConfig(FeatureGate):
    """``nebula``: Azure Nebula checkpoint service. Not supported yet (enabled must be false)."""

    persistent_storage_path: str | None = None
    """Where Nebula persists checkpoints."""
    persistent_time_interval: int = 100
    """Seconds between persisted versions."""
    num_of_version_in_retention: int = 2
    """Versions kept."""
    enable_nebula_load: bool = True
    """Load through Nebula."""
    load_path: str | None = None
    """Path Nebula loads from."""


class ProgressiveLayerDropConfig(FeatureGate):
    """``progressive_layer_drop``. Not supported yet (enabled must be false)."""

    theta: float = 1.0
    """Final keep probability."""
    gamma: float = 0.001
    """Decay rate of the keep probability."""


class EigenvalueConfig(FeatureGate):
    """``eigenvalue``: Hessian eigenvalue estimation. Not supported yet (enabled must be false)."""

    verbose: bool = False
    """Log each estimate."""
    max_iter: int = 100
    """Power-iteration steps."""
    tol: float = 1e-2
    """Convergence tolerance."""
    stability: float = 1e-6
    """Numerical stability term."""
    gas_boundary_resolution: int = 1
    """Estimate every this many boundaries."""
    layer_name: str = "bert.encoder.layer"
    """Module list the layers live in."""
    layer_num: int = 0
    """Number of layers."""


class CompileConfig(ConfigModel):
    """``compile``: DeepSpeed's DeepCompile passes. ``deepcompile: true`` is not supported yet."""

    deepcompile: bool = False
    """Enable DeepCompile."""
    autoep_non_moe: bool = False
    """DeepCompile AutoEP for non-MoE layers."""
    free_activation: bool = False
    """Free activations early."""
    free_activation_threshold: int = 10 * 1024 * 1024
    """Size above which activations are freed."""
    offload_activation: bool = False
    """Offload activations."""
    offload_activation_pin_memory: bool = True
    """Pin offloaded activations."""
    offload_opt_states: bool = False
    """Offload optimizer states."""
    double_buffer: bool = True
    """Double-buffer offloads."""
    symmetric_memory: bool = False
    """Use symmetric memory."""
    debug_log: bool = False
    """Log the passes."""
    offload_parameters: bool = False
    """Offload parameters."""
    sync_before_reduce: bool = False
    """Synchronize before reductions."""
    sync_after_reduce: bool = False
    """Synchronize after reductions."""
    sync_before_allgather: bool = False
    """Synchronize before all-gathers."""
    sync_after_allgather: bool = False
    """Synchronize after all-gathers."""
    keep_int_input_tensors: bool = True
    """Keep integer inputs."""
    keep_all_input_tensors: bool = False
    """Keep every input."""
    passes: list[str] | None = None
    """Passes to run."""


class TensorParallelConfig(ConfigModel):
    """``tensor_parallel``: AutoTP training (``autotp_size`` > 1 splits the model; ds_parallel.tensor)."""

    autotp_size: int = Field(0, ge=0)
    """AutoTP degree."""
    tp_size: int = Field(1, ge=1)
    """Tensor-parallel degree."""
    tp_grain_size: int = Field(1, ge=1)
    """Granularity of the tensor-parallel split."""
    tp_overlap_comm: bool = False
    """Overlap tensor-parallel communication."""
    preset_model: str | None = None
    """Model family preset."""
    partition_config: dict[str, Any] | None = None
    """Custom partition rules."""
    keep_module_on_host: bool = False
    """Keep modules on the host."""


def loose_section_enabled(section: dict[str, Any]) -> bool:
    """Whether a loosely-kept section (see Note [loose-sections]) switches any feature on."""
    if section.get("enabled") is True:
        return True
    return any(isinstance(v, dict) and loose_section_enabled(v) for v in section.values())
