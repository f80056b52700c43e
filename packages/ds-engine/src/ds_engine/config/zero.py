"""``zero_optimization``: every key DeepSpeed documents, including those later stages implement.

Which stages and features the installed ds_zero builds is decided by ds_zero itself (the engine asks it);
this module only validates the shape and values of the section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ds_engine.config.base import ConfigModel
from ds_engine.config.effects import Effect, applied, no_effect, refused, section

OffloadDevice = Literal["none", "cpu", "nvme"]


class OffloadParamConfig(ConfigModel):
    """``zero_optimization.offload_param``: where stage-3 parameters live between uses."""

    device: OffloadDevice = "none"
    """``none``, ``cpu`` or ``nvme``."""
    nvme_path: Path | None = None
    """Filesystem path used when ``device`` is ``nvme``."""
    buffer_count: int = Field(5, ge=0)
    """Number of buffers in the NVMe parameter swap pool."""
    buffer_size: int = Field(100_000_000, ge=0)
    """Size of each NVMe parameter swap buffer, in elements."""
    max_in_cpu: int = Field(1_000_000_000, ge=0)
    """Parameter elements kept in CPU memory when offloading to NVMe."""
    pin_memory: bool = True
    """Offload to page-locked CPU memory."""


class OffloadOptimizerConfig(ConfigModel):
    """``zero_optimization.offload_optimizer``: where optimizer states live and step (stages 1-3)."""

    device: OffloadDevice = "none"
    """``none``, ``cpu`` or ``nvme``; the optimizer step runs on the CPU for ``cpu`` and ``nvme``."""
    nvme_path: Path | None = None
    """Filesystem path used when ``device`` is ``nvme``."""
    buffer_count: int = Field(4, ge=0)
    """Number of buffers in the NVMe optimizer-state swap pool."""
    pin_memory: bool = True
    """Offload to page-locked CPU memory."""
    pipeline_read: bool = False
    """Overlap reading the next NVMe tile with the current tile's step."""
    pipeline_write: bool = False
    """Overlap writing the previous NVMe tile with the current tile's step."""
    fast_init: bool = False
    """Faster optimizer initialisation when offloading to NVMe."""
    ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Fraction of the optimizer offloaded (partial offload is stage 3 only)."""
    super_offload: bool = False
    """DeepSpeed's SuperOffload CPU-step pipeline."""
    cpuadam_cores_perc: float = Field(0.8, ge=0.0, le=1.0)
    """Share of CPU cores the CPU Adam step may use."""


# DeepSpeed 0.19's default leaf classes: mixture-of-experts blocks, whose experts run on
# data-dependent subsets of the tokens.
DEFAULT_LEAF_CLASSES = (
    "transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock",
    "transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeSparseMoeBlock",
    "transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock",
)


class LeafModuleConfig(ConfigModel):
    """``zero_optimization.leaf_module``: modules ZeRO-3 gathers as one piece (no hooks inside them)."""

    classes: list[str] = Field(default_factory=lambda: list(DEFAULT_LEAF_CLASSES))
    """Module class names (short or fully qualified) treated as leaves."""
    names: list[str] = Field(default_factory=list)
    """Module names treated as leaves."""
    name_suffixes: list[str] = Field(default_factory=list)
    """Module name suffixes treated as leaves."""

    @field_validator("classes", "names", "name_suffixes", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: object) -> object:
        # DeepSpeed accepts a single name where a list is expected
        return [value] if isinstance(value, str) else value


class ZenFlowConfig(ConfigModel):
    """``zero_optimization.zenflow``: DeepSpeed's ZenFlow (stages 1-2 with ``offload_optimizer.device:
    cpu``): the top-k gradient columns update every step on the training device, the rest on the CPU
    every ``update_interval`` steps (Note [zenflow] in ds_zero.zenflow)."""

    topk_ratio: float = Field(0.1, gt=0.0, lt=1.0)
    """Share of each 2-D weight's columns updated every step (DeepSpeed's range: above 0, below 1)."""
    select_strategy: str = "auto"
    """``step``: re-select every ``select_interval`` steps; ``epoch``: every ``select_interval`` epochs;
    ``auto``: ``epoch`` with an interval of 1."""
    select_interval: str | int = "auto"
    """Steps (or epochs) between column selections; ``auto`` only with ``select_strategy: auto``."""
    update_interval: str | int = "auto"
    """Steps between CPU updates of the unselected columns (``auto``, DeepSpeed's adaptive interval, is
    not built)."""
    overlap_step: bool = False
    """Run the CPU update in the background; its result lands at the next update."""
    offload: bool = False
    """Keep the selective update's moments in host memory between steps."""
    auto_ratio: float = Field(0.99, ge=0.0, le=1.0)
    """Threshold of the adaptive update interval."""
    full_warm_up_rounds: int = Field(0, ge=0)
    """Steps of ordinary full updates before selective updates start."""
    pt_reserved_cores_perc: float = Field(0.5, ge=0.0, le=1.0)
    """Share of cores reserved for PyTorch (the rest for DeepSpeed's optimizer process)."""
    steps_per_epoch: int | None = Field(None, gt=0)
    """Steps per epoch for ``select_strategy: epoch`` (the engine's training data loader overrides it)."""

    @field_validator("select_strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in ("auto", "step", "epoch"):
            raise ValueError(f'must be one of "auto", "step", "epoch" (got {value!r})')
        return value

    @field_validator("select_interval", "update_interval")
    @classmethod
    def _interval(cls, value: str | int) -> str | int:
        if isinstance(value, str) and value != "auto":
            raise ValueError(f'must be "auto" or an integer (got {value!r})')
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1")
        return value

    @model_validator(mode="after")
    def _strategy_and_interval(self) -> ZenFlowConfig:
        # DeepSpeed's rules (runtime/zenflow/engine.py: configure_zenflow)
        if self.select_strategy == "auto" and isinstance(self.select_interval, int):
            raise ValueError(
                'select_interval must be "auto" with select_strategy "auto" (it selects every epoch)'
            )
        if self.select_strategy != "auto" and isinstance(self.select_interval, str):
            raise ValueError(f'select_strategy "{self.select_strategy}" needs an integer select_interval')
        if (
            self.select_strategy == "step"
            and isinstance(self.update_interval, int)
            and self.select_interval < self.update_interval  # type: ignore[operator]
        ):
            raise ValueError("select_interval must be greater than or equal to update_interval")
        return self


class ZeroConfig(ConfigModel):
    """``zero_optimization``: ZeRO stage and its communication, offload and stage-3 knobs."""

    stage: Literal[0, 1, 2, 3] = 0
    """0: plain data parallel; 1: shard optimizer states; 2: also gradients; 3: also parameters."""
    contiguous_gradients: bool = True
    """Copy gradients into a contiguous buffer as they are produced."""
    reduce_scatter: bool = True
    """Average gradients with reduce-scatter (stages 1-2) instead of all-reduce."""
    reduce_bucket_size: int = Field(500_000_000, gt=0)
    """Elements reduced at a time; also the gradient bucket size of stage 0."""
    use_multi_rank_bucket_allreduce: bool = True
    """Combine the reduce buckets of different ranks into one all-reduce."""
    allgather_partitions: bool = True
    """All-gather updated partitions (instead of a series of broadcasts)."""
    allgather_bucket_size: int = Field(500_000_000, ge=0)
    """Elements all-gathered at a time."""
    overlap_comm: bool | None = None
    """Overlap gradient reduction with backward (default: true at stage 3 only)."""
    compute_grad_norm: bool = True
    """Compute the global gradient norm at stages 1-2 even when clipping is off."""
    load_from_fp32_weights: bool = True
    """Initialise fp32 master weights from the checkpoint's fp32 copy rather than the 16-bit weights."""
    elastic_checkpoint: bool = False
    """Legacy elastic checkpointing flag."""
    offload_param: OffloadParamConfig | None = None
    """Parameter offload (stage 3)."""
    offload_optimizer: OffloadOptimizerConfig | None = None
    """Optimizer-state offload (stages 1-3)."""
    zenflow: ZenFlowConfig | None = None
    """ZenFlow selective updates."""
    sub_group_size: int = Field(1_000_000_000, ge=0)
    """Tile size of stage-3 optimizer steps."""
    cpu_offload_param: bool | None = None
    """Deprecated spelling of ``offload_param: {device: cpu}``."""
    cpu_offload_use_pin_memory: bool | None = None
    """Deprecated spelling of ``pin_memory`` in the offload sections."""
    cpu_offload: bool | None = None
    """Deprecated spelling of ``offload_optimizer: {device: cpu}``."""
    prefetch_bucket_size: int = Field(50_000_000, ge=0, alias="stage3_prefetch_bucket_size")
    """Stage 3: parameter elements fetched ahead of use."""
    param_persistence_threshold: int = Field(100_000, ge=0, alias="stage3_param_persistence_threshold")
    """Stage 3: parameters smaller than this stay unpartitioned."""
    model_persistence_threshold: int = Field(2**63 - 1, ge=0, alias="stage3_model_persistence_threshold")
    """Stage 3: cap on unpartitioned parameter elements."""
    max_live_parameters: int = Field(1_000_000_000, ge=0, alias="stage3_max_live_parameters")
    """Stage 3: parameter elements resident per rank before release."""
    max_reuse_distance: int = Field(1_000_000_000, ge=0, alias="stage3_max_reuse_distance")
    """Stage 3: keep a parameter if it is reused within this distance."""
    gather_16bit_weights_on_model_save: bool = Field(False, alias="stage3_gather_16bit_weights_on_model_save")
    """Stage 3: gather full 16-bit weights when saving the model."""
    module_granularity_threshold: int = Field(0, ge=0, alias="stage3_module_granularity_threshold")
    """Stage 3: modules with at most this many parameter elements per layer beneath them are gathered as one piece."""
    use_all_reduce_for_fetch_params: bool = Field(False, alias="stage3_use_all_reduce_for_fetch_params")
    """Stage 3: fetch parameters with all-reduce."""
    allgather_sequential: bool = Field(False, alias="stage3_allgather_sequential")
    """Stage 3: all-gather parameters one by one instead of in buckets."""
    stage3_gather_fp16_weights_on_model_save: bool = False
    """Deprecated spelling of ``stage3_gather_16bit_weights_on_model_save``."""
    ignore_unused_parameters: bool = True
    """Tolerate parameters that receive no gradient."""
    legacy_stage1: bool = False
    """DeepSpeed's old stage-1 implementation."""
    round_robin_gradients: bool = False
    """Stages 1-2 with offload: spread gradient copies over ranks."""
    parameter_alignment: bool = False
    """Pad flat buffers so each parameter starts 16-byte aligned."""
    zero_hpz_partition_size: int = Field(1, ge=0)
    """ZeRO++ hpZ at stage 3: ranks in the secondary group (consecutive ranks, typically one node) inside
    which backward all-gathers run; must divide the data-parallel size. 0 or 1: off."""
    zero_quantized_weights: bool = False
    """ZeRO++ quantised weight all-gather (not built: refused at stage 3)."""
    zero_quantized_nontrainable_weights: bool = False
    """ZeRO++ quantised storage of frozen weights (not built: refused at stage 3)."""
    zero_quantized_gradients: bool = False
    """ZeRO++ quantised gradient reduction (not built: refused at stage 3)."""
    memory_efficient_linear: bool = True
    """Stage 3: memory-efficient linear layer."""
    pipeline_loading_checkpoint: bool = False
    """Stage 3: load checkpoints in pipeline mode."""
    override_module_apply: bool = True
    """Stage 3: override ``nn.Module.apply`` to gather parameters."""
    log_trace_cache_warnings: bool = False
    """Stage 3: log trace-cache invalidations."""
    enable_sanity_checks: bool = False
    """Internal sanity checks."""
    save_muon_momentum_buffer_in_memory: bool = False
    """Stage 3 with NVMe: keep Muon momentum in memory."""
    leaf_module: LeafModuleConfig = Field(default_factory=LeafModuleConfig)
    """Stage 3 leaf modules."""
    mics_shard_size: int = Field(-1)
    """MiCS: shard size (-1 disables MiCS)."""
    mics_hierarchical_params_gather: bool = False
    """MiCS: hierarchical parameter all-gather."""

    @model_validator(mode="after")
    def _resolve_deprecated(self) -> ZeroConfig:
        # Deprecated spellings map onto the current sections, as DeepSpeed does.
        if self.cpu_offload and self.offload_optimizer is None:
            self.offload_optimizer = OffloadOptimizerConfig(device="cpu")
        if self.cpu_offload_param and self.offload_param is None:
            self.offload_param = OffloadParamConfig(device="cpu")
        if self.stage3_gather_fp16_weights_on_model_save:
            self.gather_16bit_weights_on_model_save = True
        if self.cpu_offload_use_pin_memory is not None:
            for section in (self.offload_optimizer, self.offload_param):
                if section is not None and "pin_memory" not in section.model_fields_set:
                    section.pin_memory = self.cpu_offload_use_pin_memory
        if self.overlap_comm is None:
            self.overlap_comm = self.stage == 3
        if self.offload_optimizer is not None and self.offload_optimizer.ratio < 1.0 and self.stage != 3:
            raise ValueError("offload_optimizer.ratio < 1 (partial offload) needs stage 3")
        if not self.compute_grad_norm and self.stage not in (1, 2):
            raise ValueError("compute_grad_norm=false is supported only with stage 1 or 2")
        if self.zenflow is not None and (self.stage == 0 or self.offload_optimizer_device != "cpu"):
            # DeepSpeed: "Zenflow must be used with cpu offload" (stage 3 is refused by ZERO_KEYS)
            raise ValueError("zenflow needs stage 1 or 2 with offload_optimizer.device 'cpu'")
        return self

    @property
    def offload_optimizer_device(self) -> str:
        """``none``, ``cpu`` or ``nvme``."""
        return self.offload_optimizer.device if self.offload_optimizer else "none"

    @property
    def offload_param_device(self) -> str:
        """``none``, ``cpu`` or ``nvme``."""
        return self.offload_param.device if self.offload_param else "none"


# Note [key effects] in ds_engine.config.effects: what every key of these sections does here. An applied
# key names each place that reads it (``module:qualname``, ``#attr`` when the reader's name differs).
_POLICY = "ds_engine.zero_policy:policy_from_config"
_FSDP2 = "stage-3 gathers are FSDP2's, one all-gather per shard unit into one buffer (ds_zero.stage3.policy)"

ZERO_KEYS: dict[str, Effect] = {
    "stage": applied(_POLICY),
    "contiguous_gradients": no_effect(
        "gradients are always copied into one contiguous buffer per unit "
        "(stages 1-2) or per shard unit (stage 3)"
    ),
    "reduce_scatter": applied(
        _POLICY,
        "ds_zero.grad_reducer:GradReducer.__init__",
        why="stages 1-2 (false: all-reduce, keep this rank's chunk); stage 3 units "
        "always reduce-scatter through FSDP2",
    ),
    "reduce_bucket_size": applied(
        _POLICY,
        "ds_zero.policy:ReducePolicy.bucket_numel_for#bucket_numel",
        "ds_zero.stage12:_unit_numel#bucket_numel_for",
        "ds_zero.allreduce:BucketedAllReduce.__init__#bucket_numel_for",
        why="unset, stages 0-2 adapt it to the transport: DeepSpeed's 5e8 through shared memory, "
        "25 MiB buckets through c10d (Note [adaptive buckets] in ds_zero.policy)",
    ),
    "use_multi_rank_bucket_allreduce": no_effect(
        "with reduce_scatter=false each unit's bucket is already one "
        "all-reduce that covers every rank's chunk"
    ),
    "allgather_partitions": no_effect("updated shards are always published with one all-gather per unit"),
    "allgather_bucket_size": no_effect(
        "the stages 1-2 publish all-gather moves one unit at a time and units "
        "are sized by reduce_bucket_size; stage 3 gathers are bounded by "
        "stage3_prefetch_bucket_size"
    ),
    "overlap_comm": applied(
        _POLICY,
        "ds_zero.stage12:ShardedParams.__init__#overlap",
        "ds_zero.grad_reducer:GradReducer.__init__#overlap",
        why="stages 1-2, and stage 3's persistent parameters; stage 0 always overlaps",
    ),
    "compute_grad_norm": no_effect(
        "the global gradient norm is also the non-finite-gradient check (Note "
        "[non-finite gradients] in ds_zero.trainer), so it is computed every step"
    ),
    "load_from_fp32_weights": no_effect("a ZeRO checkpoint always restores the fp32 master shards it saved"),
    "elastic_checkpoint": no_effect(
        "sharded checkpoints always reshard to the loading world size (ds_zero.sharded_state)"
    ),
    "offload_param": applied("ds_engine.config.zero:ZeroConfig.offload_param_device"),
    "offload_optimizer": applied("ds_engine.config.zero:ZeroConfig.offload_optimizer_device"),
    "zenflow": section(
        refuse_when=lambda z: z.zenflow is not None and z.stage == 3,
        refuse_why="ZenFlow at stage 3 is not built (stages 1-2 are)",
        gate=" (stage 3)",
    ),
    "sub_group_size": no_effect(
        "the optimizer steps each shard in place, with no fp32 staging buffer for sub-groups to bound"
    ),
    "cpu_offload_param": applied("ds_engine.config.zero:ZeroConfig._resolve_deprecated"),
    "cpu_offload_use_pin_memory": applied("ds_engine.config.zero:ZeroConfig._resolve_deprecated"),
    "cpu_offload": applied("ds_engine.config.zero:ZeroConfig._resolve_deprecated"),
    "prefetch_bucket_size": applied(_POLICY, why="stage 3"),
    "param_persistence_threshold": applied(_POLICY, why="stage 3"),
    "model_persistence_threshold": applied(_POLICY, why="stage 3"),
    "max_live_parameters": applied(_POLICY, why="stage 3"),
    "max_reuse_distance": applied(_POLICY, why="stage 3"),
    "gather_16bit_weights_on_model_save": applied(_POLICY, why="stage 3"),
    "module_granularity_threshold": applied(_POLICY, why="stage 3"),
    "use_all_reduce_for_fetch_params": no_effect(_FSDP2),
    "allgather_sequential": no_effect(_FSDP2),
    "stage3_gather_fp16_weights_on_model_save": applied(
        "ds_engine.config.zero:ZeroConfig._resolve_deprecated"
    ),
    "ignore_unused_parameters": no_effect(
        "parameters without a gradient are always tolerated (their gradient counts as zero)"
    ),
    "legacy_stage1": no_effect("there is one stage-1 implementation"),
    "round_robin_gradients": no_effect("each rank copies only its own gradient shard to the CPU"),
    "parameter_alignment": no_effect(
        "flat units are padded to a multiple of the world size, not per parameter"
    ),
    "zero_hpz_partition_size": applied(_POLICY, why="stage 3 (ZeRO++ hpZ); ignored with a warning below it"),
    "zero_quantized_weights": refused(
        "ZeRO++ qwZ is not built (ignored with a warning below stage 3)",
        when=lambda z: z.stage == 3 and z.zero_quantized_weights,
        gate=" (ZeRO++)",
    ),
    "zero_quantized_nontrainable_weights": refused(
        "ZeRO++ quantised frozen weights are not built (ignored with a warning below stage 3)",
        when=lambda z: z.stage == 3 and z.zero_quantized_nontrainable_weights,
        gate=" (ZeRO++)",
    ),
    "zero_quantized_gradients": refused(
        "ZeRO++ qgZ is not built (ignored with a warning below stage 3)",
        when=lambda z: z.stage == 3 and z.zero_quantized_gradients,
        gate=" (ZeRO++)",
    ),
    "memory_efficient_linear": no_effect("linear layers need no special autograd function under FSDP2"),
    "pipeline_loading_checkpoint": no_effect("checkpoints load through ds_zero.sharded_state in one pass"),
    "override_module_apply": no_effect("stage 3 does not patch nn.Module.apply"),
    "log_trace_cache_warnings": no_effect("stage 3 keeps no trace cache"),
    "enable_sanity_checks": no_effect("there are no optional sanity checks"),
    "save_muon_momentum_buffer_in_memory": no_effect(
        "DeepSpeed's Muon-specific NVMe swap is not built: optimizer states swap through "
        "ds_zero.nvme_swapper whatever the optimizer"
    ),
    "leaf_module": applied("ds_engine.engine:DeepSpeedEngine.__init__"),
    "mics_shard_size": refused("MiCS is not built", when=lambda z: z.mics_shard_size > 0, gate=">0"),
    "mics_hierarchical_params_gather": no_effect("MiCS is not built"),
}

_NVME_OPT = "ds_engine.zero_policy:_nvme"
_NVME_PARAM = "ds_engine.zero_policy:_param_nvme"
OFFLOAD_OPTIMIZER_KEYS: dict[str, Effect] = {
    "device": applied(
        "ds_engine.config.zero:ZeroConfig.offload_optimizer_device",
        why="nvme: optimizer states swapped per sub-group (ds_zero.nvme_swapper)",
    ),
    "nvme_path": applied(_NVME_OPT),
    "buffer_count": applied(_NVME_OPT),
    "pin_memory": applied("ds_engine.zero_policy:_pin_memory"),
    "pipeline_read": applied(_NVME_OPT),
    "pipeline_write": applied(_NVME_OPT),
    "fast_init": no_effect(
        "optimizer states are created by the optimizer's first step and written then "
        "(Note [first step] in ds_zero.nvme_swapper): there is no slow init to speed up"
    ),
    "ratio": no_effect("partial offload is not built: the whole optimizer state is offloaded"),
    "super_offload": no_effect(
        "the CPU step is torch's fused AdamW; DeepSpeed's SuperOffload pipeline is not built"
    ),
    "cpuadam_cores_perc": no_effect(
        "the CPU step runs on torch's intra-op thread pool (OMP_NUM_THREADS, torch.set_num_threads)"
    ),
}

OFFLOAD_PARAM_KEYS: dict[str, Effect] = {
    "device": applied(
        "ds_engine.config.zero:ZeroConfig.offload_param_device",
        why="nvme: stage-3 shards swapped per unit (ds_zero.stage3.nvme_params)",
    ),
    "nvme_path": applied(_NVME_PARAM),
    "buffer_count": applied(_NVME_PARAM),
    "buffer_size": no_effect(
        "staging buffers are sized to the largest shard unit, which stage3_prefetch_bucket_size "
        "bounds (Note [parameter swapping] in ds_zero.stage3.nvme_params)"
    ),
    "max_in_cpu": applied(_NVME_PARAM),
    "pin_memory": applied(
        "ds_engine.zero_policy:_pin_memory",
        why="cpu; with nvme the shards are not page-locked: their storage is released and reallocated "
        "between uses (ds_zero.stage3.sharding:_fsdp_policies)",
    ),
}

_ZF = "ds_engine.zero_policy:zenflow_policy"
ZENFLOW_KEYS: dict[str, Effect] = {
    "topk_ratio": applied(_ZF),
    "select_strategy": applied("ds_engine.zero_policy:zenflow_select_interval"),
    "select_interval": applied("ds_engine.zero_policy:zenflow_select_interval"),
    "update_interval": applied(
        _ZF,
        refuse_when=lambda zf: zf.update_interval == "auto",
        refuse_why="the adaptive update interval is not built: set update_interval to an integer",
        gate='="auto" (adaptive; set an integer)',
    ),
    "overlap_step": applied(_ZF),
    "offload": applied(_ZF),
    "full_warm_up_rounds": applied(_ZF),
    "steps_per_epoch": applied("ds_engine.zero_policy:zenflow_select_interval"),
    "auto_ratio": no_effect(
        'only the adaptive update_interval reads it, and update_interval "auto" is refused'
    ),
    "pt_reserved_cores_perc": no_effect(
        "the overlapped CPU update is a thread of the rank's process on torch's thread pool; "
        "no cores are split off for it"
    ),
}

_LEAF = "ds_engine.engine:DeepSpeedEngine.__init__"
LEAF_MODULE_KEYS: dict[str, Effect] = {
    "classes": applied(_LEAF, why="stage 3 gathers each leaf module as one piece (ds_zero.stage3.leaf)"),
    "names": applied(_LEAF, why="stage 3"),
    "name_suffixes": applied(_LEAF, why="stage 3"),
}
