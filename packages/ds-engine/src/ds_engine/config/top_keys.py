"""The effect table of the top level of a DeepSpeed config (Note [key effects] in ds_engine.config.effects).

Kept apart from :mod:`ds_engine.config.root` so the model stays readable; the sections' own tables live next
to their models (``zero.py``, ``precision.py``, ``optim.py``, ``monitoring.py``, ``feature_keys.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from ds_engine.config.effects import Effect, applied, no_effect, refused, section
from ds_engine.config.features import loose_section_enabled

_ENGINE = "ds_engine.engine:DeepSpeedEngine.__init__"
_POLICY = "ds_engine.zero_policy:policy_from_config"
_BATCH = "ds_engine.config.root:DeepSpeedConfig.__init__"


def _loose(name: str, what: str) -> Effect:
    """A loosely kept feature tree (Note [loose-sections]): no effect while off, refused when switched on."""
    return no_effect(
        f"{what} is not built (refused when the section switches a feature on)",
        refuse_when=lambda m: bool(getattr(m, name)) and loose_section_enabled(getattr(m, name)),
        refuse_why=f"{what} is not built",
    )


TOP_KEYS: dict[str, Effect] = {
    "strict": applied("ds_engine.config.unknown:strict_mode"),
    "train_batch_size": applied(_BATCH),
    "train_micro_batch_size_per_gpu": applied(_BATCH),
    "gradient_accumulation_steps": applied(_BATCH),
    "steps_per_print": applied("ds_engine.reporting:report_step"),
    "wall_clock_breakdown": applied(_ENGINE),
    "memory_breakdown": applied("ds_engine.reporting:report_step"),
    "dump_state": applied(_ENGINE),
    "optimizer": section(),
    "scheduler": section(),
    "fp16": section(),
    "bf16": section(),
    "amp": section(),
    "torch_autocast": section(),
    "data_types": section(),
    "zero_optimization": section(),
    "zero_allow_untested_optimizer": no_effect(
        "every optimizer is accepted at every ZeRO stage (each rank steps its shard with the optimizer as "
        "given), so there is no untested-optimizer check to lift"
    ),
    "zero_force_ds_cpu_optimizer": no_effect(
        "with optimizer offload any torch optimizer steps on the CPU; none of DeepSpeed's CPU optimizers is "
        "required"
    ),
    "gradient_clipping": applied(_POLICY),
    "max_consecutive_skipped_steps": applied(_ENGINE),
    "communication_data_type": applied("ds_engine.zero_policy:_mixed_precision"),
    "seq_parallel_communication_data_type": no_effect(
        "with sequence parallelism gradients are averaged in communication_data_type (default: the model's "
        "dtype) like every other gradient; DeepSpeed switches to this dtype when sequence_parallel_size > 1"
    ),
    "prescale_gradients": applied(_POLICY),
    "gradient_predivide_factor": applied(_POLICY),
    "gradient_allreduce_op": applied(_POLICY),
    "sparse_gradients": refused(
        "sparse embedding gradients are not built", when=lambda m: m.sparse_gradients
    ),
    "disable_allgather": no_effect(
        "a flag of DeepSpeed's old stage-1 implementation; there is one stage-1 implementation here"
    ),
    "dataloader_drop_last": applied("ds_engine.engine:DeepSpeedEngine.deepspeed_io"),
    "managed_gradient_accumulation": refused(
        "the engine always counts micro-steps to find accumulation boundaries",
        when=lambda m: not m.managed_gradient_accumulation,
        gate="=false",
    ),
    "disable_python_gc": no_effect("Python's garbage collector is left as it is"),
    "log_level": applied(_ENGINE),
    "use_data_before_expert_parallelism": applied(_ENGINE, why="the rank order of the expert groups (MoE)"),
    "vocabulary_size": no_effect("no feature built here reads it (DeepSpeed only checks its alignment)"),
    "sequence_parallel_size": applied(_ENGINE),
    "checkpoint": section(),
    "activation_checkpointing": section(),
    "aio": section(),
    "tensorboard": section(),
    "csv_monitor": section(),
    "wandb": section(),
    "comet": section(),
    "comms_logger": section(),
    "flops_profiler": section(),
    "timers": section(),
    "elasticity": section(),
    "autotuning": section(),
    "data_efficiency": section(
        refuse_when=lambda m: m.data_efficiency.switched_on() and not m.data_efficiency.enabled,
        refuse_why="the data-efficiency library is not built",
    ),
    "curriculum_learning": section(),
    "compression_training": _loose("compression_training", "compression training"),
    "quantize_training": _loose("quantize_training", "MoQ quantize-aware training"),
    "weight_quantization": _loose("weight_quantization", "inference weight quantization"),
    "sparse_attention": no_effect("no SparseSelfAttention modules are built here to read it"),
    "expert_parallel": _loose("expert_parallel", "AutoEP expert parallelism"),
    "datastates_ckpt": _loose("datastates_ckpt", "DataStates asynchronous checkpointing"),
    "pipeline": section(),
    "hybrid_engine": section(),
    "nebula": section(),
    "progressive_layer_drop": section(),
    "eigenvalue": section(),
    "compile": section(),
    "tensor_parallel": section(),
}


def _tables() -> dict[type[BaseModel], tuple[str, Mapping[str, Effect]]]:
    from ds_engine.config.root import DeepSpeedConfigModel  # root imports effects, which imports this lazily

    return {DeepSpeedConfigModel: ("", TOP_KEYS)}


TABLES = _tables()
