"""Config validation: accepted shapes, the bad-config table, "did you mean", "auto", sources."""

from __future__ import annotations

import argparse
import base64
import json
import math

import pytest

from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError, DeepSpeedConfigModel, choose_config_source
from ds_engine.config.auto import resolve_auto

BASE = {"train_batch_size": 8}


def cfg(extra: dict, world_size: int = 2) -> DeepSpeedConfig:
    return DeepSpeedConfig({**BASE, **extra}, world_size=world_size)


# (config fragment, fragment of the expected one-line error)
BAD_CONFIGS = [
    ({"zero_optimization": {"stage": 4}}, "'zero_optimization.stage': Input should be 0, 1, 2 or 3"),
    (
        {"zero_optimization": {"offload_optimizer": {"device": "gpu"}}},
        "'zero_optimization.offload_optimizer.device': Input should be 'none', 'cpu' or 'nvme'",
    ),
    (
        {"zero_optimization": {"reduce_bucket_size": 0}},
        "'zero_optimization.reduce_bucket_size': Input should be greater than 0",
    ),
    ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, "fp16 and bf16 cannot both be enabled"),
    ({"fp16": {"loss_scale": -1}}, "'fp16.loss_scale': Input should be greater than or equal to 0"),
    ({"fp16": {"loss_scale": True}}, "'fp16.loss_scale': must be a number, not a boolean"),
    ({"fp16": {"loss_scale_window": 0}}, "'fp16.loss_scale_window': Input should be greater than 0"),
    ({"bf16": {"enabled": True}, "bfloat16": {"enabled": True}}, "both 'bf16' and its old name 'bfloat16'"),
    ({"gradient_clipping": "x"}, "'gradient_clipping': Input should be a valid number"),
    ({"gradient_clipping": -1.0}, "'gradient_clipping': Input should be greater than or equal to 0"),
    ({"steps_per_print": 0}, "'steps_per_print': Input should be greater than 0"),
    ({"optimizer": {"params": {"lr": 1e-3}}}, "'optimizer.type': Field required"),
    (
        {"optimizer": {"type": "AdamW", "params": {"max_grad_norm": 1.0}}},
        "use the top-level 'gradient_clipping'",
    ),
    (
        {"scheduler": {"type": "WarmupLR", "params": {"total_num_steps": "auto"}}},
        "'scheduler.params.total_num_steps' is \"auto\" but cannot be inferred",
    ),
    ({"communication_data_type": "int8"}, "'communication_data_type': Input should be"),
    ({"gradient_allreduce_op": "max"}, "'gradient_allreduce_op': Input should be 'mean' or 'sum'"),
    ({"checkpoint": {"tag_validation": "Maybe"}}, "'checkpoint.tag_validation': Input should be"),
    ({"aio": {"queue_depth": 0}}, "'aio.queue_depth': Input should be greater than 0"),
    (
        {"elasticity": {"enabled": True, "max_train_batch_size": 64}},
        "elasticity is enabled but micro_batch_sizes is missing",
    ),
    (
        {"autotuning": {"enabled": True, "start_profile_step": 4, "end_profile_step": 2}},
        "end_profile_step 2 is before start_profile_step 4",
    ),
    # Note [autotuning strict scalars]: the launcher's model refuses what lax parsing would coerce.
    ({"autotuning": {"enabled": "false"}}, "'autotuning.enabled': Input should be a valid boolean"),
    ({"autotuning": {"start_profile_step": True}}, "'autotuning.start_profile_step': expected an integer"),
    ({"data_efficiency": {"data_sampling": {"enabled": True}}}, "'data_efficiency' is not supported yet"),
    (
        {"compression_training": {"weight_quantization": {"shared_parameters": {"enabled": True}}}},
        "'compression_training' is not supported yet",
    ),
    ({"amp": {"enabled": True, "opt_level": "O1"}}, "'amp.enabled' is not supported yet"),
    ({"sparse_gradients": True}, "'sparse_gradients' is not supported yet"),
    (
        {"train_batch_size": 7, "train_micro_batch_size_per_gpu": 2},
        "gradient_accumulation_steps cannot be derived: train_batch_size 7 / (micro 2 * world_size 2)",
    ),
    (
        {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3},
        "8 != 2 * 3 * 2 = 12",
    ),
    (
        {"zero_optimization": {"stage": 3, "stage3_module_granularity_threshold": -1}},
        "'zero_optimization.stage3_module_granularity_threshold': Input should be greater than or equal to 0 (got -1)",
    ),
]


# Unknown keys (Note [unknown keys]): (config fragment, its full key path, the error of strict mode, the
# closest valid key the warning names). Accepted with one warning by default, as DeepSpeed accepts them.
UNKNOWN_KEYS = [
    (
        {"train_batch_sise": 8},
        "train_batch_sise",
        "unknown key 'train_batch_sise'; did you mean 'train_batch_size'?",
        "train_batch_size",
    ),
    (
        {"zero_optimization": {"stagee": 2}},
        "zero_optimization.stagee",
        "'zero_optimization.stagee' in 'zero_optimization'; did you mean 'zero_optimization.stage'?",
        "zero_optimization.stage",
    ),
    (
        {"zero_optimization": {"offload_optimizer": {"devcie": "cpu"}}},
        "zero_optimization.offload_optimizer.devcie",
        "did you mean 'zero_optimization.offload_optimizer.device'?",
        "zero_optimization.offload_optimizer.device",
    ),
    ({"fp16": {"enabeld": True}}, "fp16.enabeld", "did you mean 'fp16.enabled'?", "fp16.enabled"),
    (
        {"optimizer": {"type": "AdamW", "parms": {}}},
        "optimizer.parms",
        "did you mean 'optimizer.params'?",
        "optimizer.params",
    ),
    (
        {"activation_checkpointing": {"partition_activation": True}},
        "activation_checkpointing.partition_activation",
        "did you mean 'activation_checkpointing.partition_activations'?",
        "activation_checkpointing.partition_activations",
    ),
    (
        {"tensorboard": {"enabled": True, "output": "x"}},
        "tensorboard.output",
        "did you mean 'tensorboard.output_path'?",
        "tensorboard.output_path",
    ),
    (
        {"zero_optimization": {"stage": 3, "leaf_module": {"clases": ["MoE"]}}},
        "zero_optimization.leaf_module.clases",
        "unknown key 'zero_optimization.leaf_module.clases' in 'zero_optimization.leaf_module'; did you mean "
        "'zero_optimization.leaf_module.classes'?",
        "zero_optimization.leaf_module.classes",
    ),
    (
        {"bfloat16": {"enabled": True, "enabeld": True}},
        "bfloat16.enabeld",
        "did you mean 'bf16.enabled'?",
        "bf16.enabled",
    ),
]


@pytest.mark.parametrize(
    ("fragment", "path", "error", "closest"), UNKNOWN_KEYS, ids=[u[1] for u in UNKNOWN_KEYS]
)
def test_unknown_key_is_one_warning_by_default(
    fragment, path, error, closest, config_log, monkeypatch
) -> None:
    monkeypatch.delenv("DS_CONFIG_STRICT", raising=False)
    c = cfg(fragment)
    assert c.unknown_keys == [path]
    warned = [
        r.getMessage() for r in config_log.records if r.levelname == "WARNING" and path in r.getMessage()
    ]
    assert len(warned) == 1 and f"'{closest}'" in warned[0], warned
    cfg(fragment)  # the same key again: no second warning in this process
    assert [
        r.getMessage() for r in config_log.records if r.levelname == "WARNING" and path in r.getMessage()
    ] == warned


@pytest.mark.parametrize("how", ["key", "env"])
@pytest.mark.parametrize(
    ("fragment", "path", "error", "closest"), UNKNOWN_KEYS, ids=[u[1] for u in UNKNOWN_KEYS]
)
def test_unknown_key_is_an_error_in_strict_mode(fragment, path, error, closest, how, monkeypatch) -> None:
    if how == "env":
        monkeypatch.setenv("DS_CONFIG_STRICT", "1")
    else:
        monkeypatch.delenv("DS_CONFIG_STRICT", raising=False)
        fragment = {**fragment, "strict": True}
    with pytest.raises(DeepSpeedConfigError) as info:
        cfg({**fragment, "_comment": "comments stay allowed in strict mode"})
    assert error in str(info.value) and "strict mode" in str(info.value)
    assert "_comment" not in str(info.value)


def test_wrong_values_of_known_keys_stay_errors_next_to_unknown_keys(monkeypatch) -> None:
    monkeypatch.delenv("DS_CONFIG_STRICT", raising=False)
    with pytest.raises(DeepSpeedConfigError, match="'zero_optimization.stage': Input should be 0, 1, 2 or 3"):
        cfg({"not_a_key": 1, "zero_optimization": {"stage": 5, "also_not": 2}})


def test_keys_deepspeed_ignores(config_log, monkeypatch) -> None:
    """TRL's dotted keys, LLaMA-Factory's comments and monitor_config/comms_config: accepted, not applied."""
    monkeypatch.delenv("DS_CONFIG_STRICT", raising=False)
    c = cfg(
        {
            "zero_optimization": {"stage": 3},
            "_comment": "a comment",
            "zero_optimization.stage3_prefetch_bucket_size": 0.9 * 64 * 64,
            "zero_optimization.stage3_param_persistence_threshold": 640,
            "monitor_config": {"enabled": True, "csv_monitor": {"enabled": False}},
            "comms_config": {"verbose": False},
        }
    )
    assert (
        c.zero_optimization.prefetch_bucket_size == 50_000_000
    )  # DeepSpeed does not apply a dotted key either
    assert c.zero_optimization.param_persistence_threshold == 100_000
    assert sorted(c.unknown_keys) == [
        "comms_config",
        "monitor_config",
        "zero_optimization.stage3_param_persistence_threshold",
        "zero_optimization.stage3_prefetch_bucket_size",
    ]
    text = "\n".join(r.getMessage() for r in config_log.records if r.levelname == "WARNING")
    assert (
        "'zero_optimization.stage3_prefetch_bucket_size'; a dotted key is not applied" in text
        and "write 'stage3_prefetch_bucket_size' inside the 'zero_optimization' section" in text
    )
    assert "'monitor_config'; ignored" in text and "'comms_logger'" in text
    assert "_comment" not in text


@pytest.mark.parametrize("stage", [0, 1, 2])
@pytest.mark.parametrize(
    "key,value",
    [
        ("zero_hpz_partition_size", 8),
        ("zero_quantized_weights", True),
        ("zero_quantized_gradients", True),
        ("zero_quantized_nontrainable_weights", True),
    ],
)
def test_zero_plus_plus_keys_are_ignored_below_stage_3(stage, key, value, config_log) -> None:
    c = cfg({"zero_optimization": {"stage": stage, key: value}})
    assert c.zero_optimization_stage == stage
    assert any(
        f"'zero_optimization.{key}' takes effect only at ZeRO stage 3; ignored at stage {stage}"
        in r.getMessage()
        for r in config_log.records
    )
    if key == "zero_hpz_partition_size":  # hpZ is built at stage 3 (ds_zero.stage3, Note [hpZ])
        assert (
            cfg({"zero_optimization": {"stage": 3, key: value}}).zero_optimization.zero_hpz_partition_size
            == value
        )
        return
    with pytest.raises(
        DeepSpeedConfigError, match=f"'zero_optimization.{key} \\(ZeRO\\+\\+\\)' is not supported yet"
    ):
        cfg({"zero_optimization": {"stage": 3, key: value}})


@pytest.mark.parametrize(
    "spelling",
    [
        "torch.bfloat16",
        "bf16",
        "bfloat16",
        "torch.float16",
        "fp16",
        "float16",
        "half",
        "torch.float32",
        "fp32",
        "float32",
        "float",
        "int8",
        "torch.int8",
    ],
)
def test_torch_autocast_dtype_takes_deepspeeds_spellings(spelling) -> None:
    assert cfg({"torch_autocast": {"enabled": False, "dtype": spelling}}).torch_autocast.dtype == spelling


def test_torch_autocast_dtype_object_and_bad_spelling() -> None:
    import torch

    assert cfg({"torch_autocast": {"dtype": torch.bfloat16}}).torch_autocast.dtype == "torch.bfloat16"
    with pytest.raises(DeepSpeedConfigError, match="'torch_autocast.dtype'"):
        cfg({"torch_autocast": {"dtype": "torch.bfloat17"}})


@pytest.mark.parametrize(("fragment", "message"), BAD_CONFIGS, ids=[m[:40] for _, m in BAD_CONFIGS])
def test_bad_config_table(fragment: dict, message: str) -> None:
    with pytest.raises(DeepSpeedConfigError) as info:
        cfg(fragment)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_configs_clients_send_are_accepted() -> None:
    hf_style = {
        "fp16": {
            "enabled": "auto",
            "loss_scale": 0,
            "loss_scale_window": 1000,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "bf16": {"enabled": "auto"},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": "auto",
                "warmup_max_lr": "auto",
                "warmup_num_steps": "auto",
                "total_num_steps": 100,
            },
        },
        "zero_optimization": {
            "stage": 2,
            "offload_param": {"device": "none"},
            "allgather_partitions": True,
            "allgather_bucket_size": 5e8,
            "overlap_comm": True,
            "reduce_scatter": True,
            "reduce_bucket_size": "auto",
            "contiguous_gradients": True,
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "steps_per_print": math.inf,
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": 4,
        "wall_clock_breakdown": False,
        "activation_checkpointing": {"partition_activations": False, "cpu_checkpointing": False},
        "aio": {
            "block_size": 262144,
            "queue_depth": 32,
            "thread_count": 1,
            "single_submit": False,
            "overlap_events": True,
        },
        "zero_allow_untested_optimizer": True,
        "comms_logger": {"enabled": False},
        "wandb": {"enabled": False},
        "elasticity": {"enabled": False},
        "autotuning": {"enabled": False},
        "flops_profiler": {"enabled": False},
        "data_efficiency": {"enabled": False},
    }
    c = DeepSpeedConfig(hf_style, world_size=2)
    assert (c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps) == (8, 4, 1)
    assert c.zero_optimization.stage == 2 and c.zero_optimization.offload_param.device == "none"
    assert c.zero_optimization.reduce_bucket_size == 500_000_000  # "auto" -> default
    assert c.zero_optimization.gather_16bit_weights_on_model_save is True
    assert c.steps_per_print is None and c.gradient_clipping == 1.0
    assert c.optimizer.params == {} and c.scheduler.params["warmup_max_lr"] is None
    assert c.aio.intra_op_parallelism == 1
    assert not c.fp16_enabled and not c.bfloat16_enabled


def test_old_spellings() -> None:
    assert cfg({"zero_optimization": True}).zero_optimization_stage == 1
    assert cfg({"zero_optimization": False}).zero_optimization_stage == 0
    assert cfg({"bfloat16": {"enabled": True}}).bfloat16_enabled
    zero = cfg({"zero_optimization": {"stage": 2, "cpu_offload": True}}).zero_optimization
    assert zero.offload_optimizer.device == "cpu"


def test_every_field_is_documented() -> None:
    def walk(model: type) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            sub = getattr(field.annotation, "model_fields", None)
            if sub is not None:
                walk(field.annotation)

    walk(DeepSpeedConfigModel)


def test_auto_resolution_is_reported() -> None:
    resolved, notes = resolve_auto(
        {
            "train_batch_size": "auto",
            "bf16": {"enabled": "auto"},
            "data_types": {"keep_in_fp32_modules": "auto"},
        }
    )
    assert resolved == {"bf16": {"enabled": False}, "data_types": {"keep_in_fp32_modules": "auto"}}
    assert "train_batch_size: auto -> default/derived" in notes


def test_sources(tmp_path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": 4, "steps_per_print": 5}))
    assert DeepSpeedConfig(str(path), world_size=1).steps_per_print == 5
    encoded = base64.b64encode(json.dumps({"train_micro_batch_size_per_gpu": 3}).encode()).decode()
    assert DeepSpeedConfig(encoded, world_size=2).train_batch_size == 6
    with pytest.raises(DeepSpeedConfigError, match="config file not found"):
        DeepSpeedConfig(str(tmp_path / "missing.json"))
    (tmp_path / "dup.json").write_text('{"train_batch_size": 4, "train_batch_size": 8}')
    with pytest.raises(DeepSpeedConfigError, match="duplicate key 'train_batch_size'"):
        DeepSpeedConfig(str(tmp_path / "dup.json"))
    (tmp_path / "broken.json").write_text('{"train_batch_size": 4,\n "fp16": }')
    with pytest.raises(DeepSpeedConfigError, match="invalid JSON at line 2"):
        DeepSpeedConfig(str(tmp_path / "broken.json"))


def test_choose_config_source() -> None:
    args = argparse.Namespace(deepspeed_config="a.json")
    assert choose_config_source(args=args) == "a.json"
    assert choose_config_source(args=argparse.Namespace(deepspeed_config=None), config={"x": 1}) == {"x": 1}
    assert choose_config_source(config_params={"y": 2}) == {"y": 2}
    assert choose_config_source(args=argparse.Namespace(deepscale_config="old.json")) == "old.json"
    with pytest.raises(DeepSpeedConfigError, match="both as args.deepspeed_config and as initialize"):
        choose_config_source(args=args, config={"x": 1})
    with pytest.raises(DeepSpeedConfigError, match="both 'config' and 'config_params'"):
        choose_config_source(config={"x": 1}, config_params={"y": 2})
    with pytest.raises(DeepSpeedConfigError, match="no DeepSpeed config"):
        choose_config_source(args=argparse.Namespace())


def test_caller_dict_is_not_mutated() -> None:
    raw = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": 2, "bfloat16": {"enabled": True}}
    snapshot = json.dumps(raw)
    DeepSpeedConfig(raw, world_size=1)
    assert json.dumps(raw) == snapshot


def test_leaf_module_section_defaults_and_single_names() -> None:
    defaults = cfg({"zero_optimization": {"stage": 3}}).zero_optimization.leaf_module
    assert [c.rsplit(".", 1)[-1] for c in defaults.classes] == [
        "MixtralSparseMoeBlock",
        "Qwen2MoeSparseMoeBlock",
        "Qwen3MoeSparseMoeBlock",
    ]  # DeepSpeed 0.19's
    one = cfg({"zero_optimization": {"stage": 3, "leaf_module": {"classes": "MoE", "name_suffixes": "mlp"}}})
    assert (one.zero_optimization.leaf_module.classes, one.zero_optimization.leaf_module.name_suffixes) == (
        ["MoE"],
        ["mlp"],
    )
