"""Sections for features outside the training step: checkpoints, activation checkpointing, async I/O,
and the DeepSpeed features this project does not build yet (accepted only while disabled).

Note: [loose-sections] A few DeepSpeed sections are large trees consumed only by features that are not
built here (data-efficiency samplers, compression, sparse attention). Their top-level keys are validated;
their inner trees are kept as given, and :func:`ds_engine.config.root.check_unsupported` refuses any of
them that switches its feature on.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field

from ds_engine.config.base import ConfigModel, FeatureGate


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

    tag_validation: Literal["Ignore", "Warn", "Fail", "IGNORE", "WARN", "FAIL", "ignore", "warn", "fail"] = "Warn"
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
    intra_op_parallelism: int = Field(1, gt=0, validation_alias=AliasChoices("intra_op_parallelism", "thread_count"))
    """I/O threads per operation (older configs call it ``thread_count``)."""
    single_submit: bool = False
    """Submit requests one at a time."""
    overlap_events: bool = True
    """Overlap submission and completion."""
    use_gds: bool = False
    """Use GPUDirect Storage."""


class ElasticityConfig(FeatureGate):
    """``elasticity``: elastic batch-size selection. Not supported yet (enabled must be false); the
    launcher's ``--elastic_training`` uses torch elastic."""

    max_train_batch_size: int | None = None
    """Largest global batch size allowed."""
    micro_batch_sizes: list[int] | None = None
    """Candidate micro-batch sizes."""
    min_gpus: int = 1
    """Fewest accelerators."""
    max_gpus: int = 10_000
    """Most accelerators."""
    min_time: int = 0
    """Minimum minutes between scaling events."""
    version: float = 0.2
    """Elasticity algorithm version."""
    ignore_non_elastic_batch_info: bool = False
    """Ignore batch keys outside this section."""
    prefer_larger_batch: bool = True
    """Prefer larger batches when several are valid."""
    num_gpus_per_node: int = 1
    """Accelerators per node."""
    model_parallel_size: int = 1
    """Model-parallel degree."""


class AutotuningConfig(FeatureGate):
    """``autotuning``: DeepSpeed's autotuner. Not supported yet (enabled must be false)."""

    fast: bool = True
    """Tune only the most important knobs."""
    results_dir: str = "autotuning_results"
    """Directory for results."""
    exps_dir: str = "autotuning_exps"
    """Directory for experiments."""
    overwrite: bool = True
    """Overwrite previous results."""
    start_profile_step: int = 3
    """First profiled step."""
    end_profile_step: int = 5
    """Last profiled step."""
    metric_path: str | None = None
    """Where the metric is written."""
    tuner_type: Literal["gridsearch", "random", "model_based"] = "gridsearch"
    """Search strategy."""
    tuner_early_stopping: int = 5
    """Stop after this many trials without improvement."""
    tuner_num_trials: int = 50
    """Most trials."""
    arg_mappings: dict[str, str] | None = None
    """Map of config keys to script arguments."""
    max_train_batch_size: int | None = None
    """Largest global batch tried."""
    min_train_batch_size: int = 1
    """Smallest global batch tried."""
    max_train_micro_batch_size_per_gpu: int = 1024
    """Largest micro batch tried."""
    min_train_micro_batch_size_per_gpu: int = 1
    """Smallest micro batch tried."""
    num_tuning_micro_batch_sizes: int = 3
    """Micro-batch sizes tried."""
    mp_size: int = 1
    """Model-parallel degree."""
    metric: Literal["latency", "throughput", "flops", "forward", "step"] = "throughput"
    """What is optimised."""
    model_info: dict[str, Any] | None = None
    """Model facts (num_params, hidden_size, num_layers, profile)."""
    model_info_path: str | None = None
    """Where model facts are written."""


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
    """``tensor_parallel``: AutoTP. Only ``autotp_size`` 0 or 1 (no tensor parallelism) is supported yet."""

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
