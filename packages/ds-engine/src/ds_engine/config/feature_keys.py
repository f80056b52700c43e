"""Effect tables of the sections in :mod:`ds_engine.config.features` (Note [key effects] in
ds_engine.config.effects): checkpoints, activation checkpointing, async I/O, elasticity, autotuning, the
pipeline and tensor-parallel options, and the DeepSpeed features not built here.

A not-built feature's section accepts its keys with no effect (warned when set) and refuses the switch
that turns the feature on, so it is never silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from ds_engine.config import features as f
from ds_engine.config.effects import Effect, applied, no_effect, refused, section


def _not_built(
    model: type[BaseModel], what: str, switch: str = "enabled", when: Callable[[Any], bool] | None = None
) -> dict[str, Effect]:
    """Every key no effect, ``switch`` refused when on (``when``, default: the switch is true)."""
    why = f"{what} is not built ('{switch}' is refused)"
    table = {name: no_effect(why) for name in model.model_fields if name != switch}
    table[switch] = refused(f"{what} is not built", when=when or (lambda s: bool(getattr(s, switch))))
    return table


_SAVE = "ds_engine.checkpoint.engine_io:save"
CHECKPOINT_KEYS: dict[str, Effect] = {
    "tag_validation": applied(f"{_SAVE}#tag_validation_mode"),
    "load_universal": no_effect(
        "checkpoints saved here load at any world size and stage without a universal "
        "conversion; the flag selects nothing"
    ),
    "use_node_local_storage": applied(_SAVE),
    "parallel_write": section(),
    "checkpoint_serialization": no_effect("checkpoints are always written with torch's zip serialization"),
    "writer": section(),
    "rendezvous_timeout": applied(_SAVE),
}
PARALLEL_WRITE_KEYS: dict[str, Effect] = {
    "pipeline_stage": no_effect(
        "each pipeline stage already writes its own layer files (ds_engine.pipe_checkpoint)"
    ),
}
WRITER_KEYS: dict[str, Effect] = {
    name: no_effect(
        "checkpoint files are written by torch.save through one atomic writer; DeepSpeed's "
        "fast and decoupled writers are not built"
    )
    for name in f.CheckpointWriterConfig.model_fields
}
_AC = "ds_engine.activation_checkpointing:_from_config"
ACTIVATION_CHECKPOINTING_KEYS: dict[str, Effect] = {
    name: applied(
        _AC, why="read by deepspeed.checkpointing.configure(mpu, deepspeed_config=...), as in DeepSpeed"
    )
    for name in f.ActivationCheckpointingConfig.model_fields
}
_NVME = ("ds_engine.zero_policy:_nvme", "ds_engine.zero_policy:_param_nvme")
AIO_KEYS: dict[str, Effect] = {
    "block_size": applied(*_NVME),
    "queue_depth": applied(*_NVME),
    "intra_op_parallelism": applied(*_NVME),
    "single_submit": no_effect(
        "the NVMe swapper submits its reads and writes from its own threads (ds_zero.nvme_swapper)"
    ),
    "overlap_events": no_effect("the NVMe swapper always overlaps submission and completion"),
    "use_gds": refused(
        "GPUDirect Storage is not built: the NVMe engine reads into host memory", when=lambda s: s.use_gds
    ),
}
_PLAN = "ds_engine.elasticity.compute:plan_elastic_batch"
ELASTICITY_KEYS: dict[str, Effect] = {
    "enabled": applied("ds_engine.config.root:DeepSpeedConfig.__init__"),
    **{
        name: applied(_PLAN)
        for name in (
            "max_train_batch_size",
            "micro_batch_sizes",
            "min_gpus",
            "max_gpus",
            "version",
            "prefer_larger_batch",
            "num_gpus_per_node",
            "model_parallel_size",
        )
    },
    "min_time": no_effect("a hint for schedulers; training does not read it (nor does DeepSpeed's)"),
    "ignore_non_elastic_batch_info": applied("ds_engine.elasticity.batch:elastic_batch_sizes"),
}
_PROBE = "ds_engine.autotuning_probe:AutotuningProbe"
_TUNER = "ds_launch.autotuning.autotuner:Autotuner"
_LAUNCHER = "read by the launcher's autotuner (deepspeed --autotuning)"
AUTOTUNING_KEYS: dict[str, Effect] = {
    "enabled": applied(f"{_PROBE}.for_engine"),
    "fast": applied(f"{_TUNER}.tune_stage", why=_LAUNCHER),
    "results_dir": applied(f"{_TUNER}.__init__", why=_LAUNCHER),
    "exps_dir": applied(f"{_TUNER}.__init__", why=_LAUNCHER),
    "overwrite": applied(f"{_TUNER}.__init__", why=_LAUNCHER),
    "start_profile_step": applied(f"{_PROBE}.for_engine"),
    "end_profile_step": applied(f"{_PROBE}.for_engine"),
    "metric_path": applied(f"{_PROBE}.for_engine"),
    "tuner_type": applied(f"{_TUNER}.tune_stage", why=_LAUNCHER),
    "tuner_early_stopping": applied(f"{_TUNER}._search", why=_LAUNCHER),
    "tuner_num_trials": applied(f"{_TUNER}._search", why=_LAUNCHER),
    "arg_mappings": applied("ds_launch.autotuning:run_autotuning", why=_LAUNCHER),
    "max_train_batch_size": applied(f"{_TUNER}.micro_batches", why=_LAUNCHER),
    "min_train_batch_size": applied(f"{_TUNER}.prune_reason", why=_LAUNCHER),
    "max_train_micro_batch_size_per_gpu": applied(f"{_TUNER}.micro_batches", why=_LAUNCHER),
    "min_train_micro_batch_size_per_gpu": applied(
        "ds_launch.autotuning.space:smallest_micro_batch", why=_LAUNCHER
    ),
    "num_tuning_micro_batch_sizes": applied(f"{_TUNER}.micro_batches", why=_LAUNCHER),
    "mp_size": applied(f"{_TUNER}.__init__", why=_LAUNCHER),
    "metric": applied(f"{_TUNER}.__init__", why=_LAUNCHER),
    "model_info": applied(f"{_PROBE}.__init__"),
    "model_info_path": applied(f"{_PROBE}.__init__"),
    "memory_per_device": applied(f"{_PROBE}._finish_model_info"),
}
_DATA_EFFICIENCY = (
    "the data-efficiency library is not built (a section that switches a feature on is refused)"
)
DATA_EFFICIENCY_KEYS: dict[str, Effect] = {
    name: no_effect(_DATA_EFFICIENCY) for name in f.DataEfficiencyConfig.model_fields if name != "enabled"
}
# A tree switched on inside data_sampling/data_routing is refused by the top-level table ('data_efficiency').
DATA_EFFICIENCY_KEYS["enabled"] = refused(
    "the data-efficiency library is not built", when=lambda s: s.enabled
)
_MODULE_ARGS = (
    "PipelineModule's own arguments (num_stages, partition_method, seed_layers) decide; DeepSpeed's "
    "pipeline engine does not read this key either"
)
_NO_SLICING = (
    "activations and gradients pass between stages whole: partitioning them needs a tensor-slicing "
    "'model' axis > 1, which is refused"
)
PIPELINE_KEYS: dict[str, Effect] = {
    "stages": no_effect(_MODULE_ARGS),
    "partition": no_effect(_MODULE_ARGS),
    "seed_layers": no_effect(_MODULE_ARGS),
    "activation_checkpoint_interval": applied(
        "ds_engine.pipe_engine:PipelineEngine.__init__", why="when > 0 it overrides the module's"
    ),
    "pipe_partitioned": no_effect(_NO_SLICING),
    "grad_partitioned": no_effect(_NO_SLICING),
}
_DEEPCOMPILE = "DeepCompile is not built ('compile.deepcompile' is refused)"
COMPILE_KEYS: dict[str, Effect] = {name: no_effect(_DEEPCOMPILE) for name in f.CompileConfig.model_fields}
COMPILE_KEYS["deepcompile"] = refused("DeepCompile is not built", when=lambda s: s.deepcompile)
TENSOR_PARALLEL_KEYS: dict[str, Effect] = {
    "autotp_size": applied("ds_engine.autotp:tensor_parallel_size"),
    "tp_size": refused(
        "inference-style tensor parallelism (tp_size) is not built; AutoTP training uses autotp_size",
        when=lambda s: s.tp_size > 1,
        gate=">1",
    ),
    "tp_grain_size": no_effect("AutoTP splits each weight into equal parts, one per tensor rank"),
    "tp_overlap_comm": no_effect("the tensor-parallel all-reduce runs right after each row-parallel layer"),
    "preset_model": no_effect(
        "AutoTP finds the layers to split from their module types and names "
        "(ds_parallel.tensor), with partition_config for custom rules"
    ),
    "partition_config": applied("ds_engine.autotp:split_model"),
    "keep_module_on_host": no_effect("the model is split where it lives; it is not staged on the host"),
}

TABLES: dict[type[BaseModel], tuple[str, Mapping[str, Effect]]] = {
    f.CheckpointConfig: ("checkpoint", CHECKPOINT_KEYS),
    f.ParallelWriteConfig: ("checkpoint.parallel_write", PARALLEL_WRITE_KEYS),
    f.CheckpointWriterConfig: ("checkpoint.writer", WRITER_KEYS),
    f.ActivationCheckpointingConfig: ("activation_checkpointing", ACTIVATION_CHECKPOINTING_KEYS),
    f.AioConfig: ("aio", AIO_KEYS),
    f.ElasticityConfig: ("elasticity", ELASTICITY_KEYS),
    f.AutotuningConfig: ("autotuning", AUTOTUNING_KEYS),
    f.DataEfficiencyConfig: ("data_efficiency", DATA_EFFICIENCY_KEYS),
    f.LegacyCurriculumConfig: (
        "curriculum_learning",
        _not_built(f.LegacyCurriculumConfig, "legacy curriculum learning"),
    ),
    f.PipelineConfig: ("pipeline", PIPELINE_KEYS),
    f.HybridEngineConfig: ("hybrid_engine", _not_built(f.HybridEngineConfig, "the hybrid engine")),
    f.NebulaConfig: ("nebula", _not_built(f.NebulaConfig, "Nebula checkpointing")),
    f.ProgressiveLayerDropConfig: (
        "progressive_layer_drop",
        _not_built(f.ProgressiveLayerDropConfig, "progressive layer drop"),
    ),
    f.EigenvalueConfig: ("eigenvalue", _not_built(f.EigenvalueConfig, "eigenvalue estimation")),
    f.CompileConfig: ("compile", COMPILE_KEYS),
    f.TensorParallelConfig: ("tensor_parallel", TENSOR_PARALLEL_KEYS),
}
