"""DeepSpeed's public names resolve at DeepSpeed's paths through the meta-package."""

from __future__ import annotations

import subprocess
import sys

import pytest

import deepspeed


def test_version_passes_client_gates():
    from packaging.version import Version

    assert Version(deepspeed.__version__) >= Version("0.16.0")


def test_comm_and_accelerator_paths():
    import deepspeed.comm as dist
    from deepspeed.accelerator import get_accelerator
    from deepspeed.comm import comm

    assert dist.init_distributed is deepspeed.init_distributed
    assert comm.all_reduce is dist.all_reduce
    assert get_accelerator().communication_backend_name() in {"gloo", "nccl", "ccl", "hccl", "xccl"}


def test_unknown_attribute_is_an_attribute_error():
    try:
        deepspeed.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_deepspeed_is_cheap():
    code = "import sys, deepspeed; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_feature_modules_resolve_as_attributes():
    assert callable(deepspeed.elasticity.compute_elastic_config)
    assert deepspeed.autotuning is not None
    assert deepspeed.runtime.zero.partition_parameters.Init is deepspeed.zero.Init
    from deepspeed.runtime.lr_schedules import VALID_LR_SCHEDULES

    assert {"WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest"} <= set(
        VALID_LR_SCHEDULES
    )


def test_zero3_names_at_deepspeed_paths():
    import torch

    import deepspeed.runtime.zero.partition_parameters as pp
    import deepspeed.zero as zero
    from ds_engine.zero_init import Init  # ds_zero's Init, fed configs the engine validated
    from ds_zero.stage3 import GatheredParameters
    from ds_zero.stage3 import Init as ZeroInit

    assert zero.Init is Init and zero.GatheredParameters is GatheredParameters and pp.Init is Init
    assert issubclass(Init, ZeroInit)
    assert pp._orig_torch_arange is torch.arange and pp._orig_torch_empty is torch.empty
    make = pp.zero_wrapper_for_fp_tensor_constructor(torch.ones, torch.bfloat16, torch.device("cpu"))
    assert make(3).dtype == torch.bfloat16 and make(3, dtype=torch.int64).dtype == torch.int64


# --- the names downstream clients import (issue 14), with DeepSpeed's parameter names --------------------
# (module path, attribute path inside it, DeepSpeed's parameter names in order)
SIGNATURES = [
    ("deepspeed.runtime.utils", "see_memory_usage", ["message", "force"]),
    ("deepspeed.runtime.utils", "move_to_device", ["item", "device", "criterion_func"]),
    ("deepspeed.runtime.utils", "clip_grad_norm_", ["parameters", "max_norm", "norm_type", "mpu"]),
    ("deepspeed.runtime.utils", "get_global_norm", ["norm_list"]),
    ("deepspeed.runtime.utils", "noop_decorator", ["func"]),
    ("deepspeed.utils.timer", "SynchronizedWallClockTimer", []),
    (
        "deepspeed.utils.timer",
        "SynchronizedWallClockTimer.log",
        ["self", "names", "normalizer", "reset", "memory_breakdown", "ranks"],
    ),
    ("deepspeed.utils.timer", "SynchronizedWallClockTimer.Timer.start", ["self"]),
    ("deepspeed.utils.timer", "SynchronizedWallClockTimer.Timer.stop", ["self", "reset", "record"]),
    ("deepspeed.utils.timer", "SynchronizedWallClockTimer.Timer.elapsed", ["self", "reset"]),
    (
        "deepspeed.utils.timer",
        "ThroughputTimer",
        ["config", "batch_size", "start_step", "steps_per_output", "monitor_memory", "logging_fn"],
    ),
    ("deepspeed.utils.timer", "ThroughputTimer.start", ["self"]),
    ("deepspeed.utils.timer", "ThroughputTimer.stop", ["self", "global_step", "report_speed"]),
    ("deepspeed.runtime.checkpoint_engine", "CheckpointEngine", ["config_params"]),
    ("deepspeed.runtime.checkpoint_engine", "TorchCheckpointEngine", ["config_params"]),
    ("deepspeed.runtime.checkpoint_engine", "TorchCheckpointEngine.create", ["self", "info"]),
    ("deepspeed.runtime.checkpoint_engine", "TorchCheckpointEngine.save", ["self", "state_dict", "path"]),
    ("deepspeed.runtime.checkpoint_engine", "TorchCheckpointEngine.load", ["self", "path", "map_location"]),
    ("deepspeed.runtime.checkpoint_engine", "TorchCheckpointEngine.commit", ["self", "info"]),
    ("deepspeed.runtime.dataloader", "RepeatingLoader", ["loader"]),
    ("deepspeed.utils", "RepeatingLoader", ["loader"]),
    ("deepspeed.compression.helper", "recursive_getattr", ["model", "module_name"]),
    ("deepspeed.compression.helper", "recursive_setattr", ["model", "module_name", "module"]),
    ("deepspeed.comm", "mpi_discovery", ["distributed_port", "verbose"]),
    ("deepspeed.comm", "TorchBackend", ["backend", "timeout", "init_method", "rank", "world_size", "name"]),
    ("deepspeed.utils", "safe_get_full_fp32_param", ["param"]),
    ("deepspeed.utils", "safe_get_full_grad", ["param"]),
    ("deepspeed.utils", "safe_get_full_optimizer_state", ["param", "optim_state_key"]),
    ("deepspeed.utils", "safe_set_full_fp32_param", ["param", "value"]),
    ("deepspeed.utils", "safe_set_full_optimizer_state", ["param", "value", "optim_state_key"]),
    ("deepspeed.utils", "safe_set_full_grad", ["param", "value"]),
    ("deepspeed.utils", "safe_get_local_fp32_param", ["param"]),
    ("deepspeed.utils", "safe_get_local_grad", ["param"]),
    ("deepspeed.utils", "safe_get_local_optimizer_state", ["param", "optim_state_key"]),
    ("deepspeed.utils", "safe_set_local_fp32_param", ["param", "value"]),
    ("deepspeed.utils", "safe_set_local_grad", ["param", "value"]),
    ("deepspeed.utils", "safe_set_local_optimizer_state", ["param", "value", "optim_state_key"]),
    ("deepspeed.utils", "safe_update_full_grad_vectorized", ["param_list", "update_func"]),
    ("deepspeed.accelerator", "is_current_accelerator_supported", []),
    ("ds_zero", "ZeroTrainer.check_overflow", ["self", "partition_gradients"]),
]

ACCELERATOR_SIGNATURES = {
    "range_push": ["msg", "domain", "category"],
    "range_pop": ["domain"],
    "lazy_call": ["callback"],
    "get_op_builder": ["class_name"],
    "create_op_builder": ["class_name"],
    "op_builder_dir": [],
    "default_generator": ["device_index"],
    "stream": ["stream"],
    "current_stream": ["device_index"],
    "memory_reserved": ["device_index"],
    "max_memory_reserved": ["device_index"],
    "empty_cache": [],
    "manual_seed": ["seed"],
    "manual_seed_all": ["seed"],
    "is_fp16_supported": [],
    "supported_dtypes": [],
    "on_accelerator": ["tensor"],
}
ACCELERATOR_PROPERTIES = [
    "LongTensor",
    "FloatTensor",
    "HalfTensor",
    "BFloat16Tensor",
    "IntTensor",
    "ByteTensor",
    "Stream",
    "Event",
]


def _resolve(module: str, path: str):
    import importlib

    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize(("module", "path", "params"), SIGNATURES, ids=[f"{m}.{p}" for m, p, _ in SIGNATURES])
def test_client_names_have_deepspeeds_parameters(module, path, params):
    import inspect

    assert list(inspect.signature(_resolve(module, path)).parameters)[: len(params) or None] == params


def test_accelerator_methods_have_deepspeeds_parameters():
    import inspect

    accel = deepspeed.get_accelerator()
    for name, params in ACCELERATOR_SIGNATURES.items():
        assert list(inspect.signature(getattr(accel, name)).parameters) == params, name
    for name in ACCELERATOR_PROPERTIES:
        assert getattr(accel, name) is not None, name


def test_version_is_a_string_and_the_module_path_still_imports():
    import subprocess
    import sys

    code = (
        "import deepspeed; assert deepspeed.version == deepspeed.__version__ and isinstance(deepspeed.version, str); "
        "from deepspeed.version import __version__; assert __version__ == deepspeed.version; "
        "import deepspeed.version; assert isinstance(deepspeed.version, str); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def test_git_version_info_reports_the_op_table():
    from deepspeed import git_version_info as info
    from deepspeed.ops.op_builder import ALL_OPS

    assert info.version == deepspeed.__version__ and info.git_hash == deepspeed.__git_hash__
    assert isinstance(info.git_branch, str)
    assert set(info.installed_ops) == set(ALL_OPS) == set(info.compatible_ops)
    assert info.installed_ops["cpu_adam"] and info.installed_ops["async_io"]
    assert not info.installed_ops["transformer_inference"]
    assert {"version", "bf16_support", "cuda_version", "nccl_version", "hip_version"} <= set(info.torch_info)


def test_op_builders_at_deepspeeds_paths():
    from deepspeed.accelerator import get_accelerator
    from deepspeed.ops import op_builder

    names = [
        "CPUAdamBuilder",
        "FusedAdamBuilder",
        "FusedLambBuilder",
        "CPUAdagradBuilder",
        "CPULionBuilder",
        "FusedLionBuilder",
        "AsyncIOBuilder",
        "InferenceBuilder",
        "TransformerBuilder",
        "QuantizerBuilder",
        "SparseAttnBuilder",
    ]
    for name in names:
        assert get_accelerator().get_op_builder(name) is getattr(op_builder, name)
    assert {
        "cpu_adam",
        "fused_adam",
        "fused_lamb",
        "cpu_adagrad",
        "cpu_lion",
        "fused_lion",
        "async_io",
        "transformer_inference",
        "transformer",
        "quantizer",
        "sparse_attn",
    } == set(op_builder.ALL_OPS)


def test_checkpoint_constants_are_deepspeeds_values():
    from deepspeed.checkpoint import constants as c
    from ds_engine.checkpoint import layout

    assert (c.OPTIMIZER_STATE_DICT, c.FP32_FLAT_GROUPS, c.SINGLE_PARTITION_OF_FP32_GROUPS) == (
        "optimizer_state_dict",
        "fp32_flat_groups",
        "single_partition_of_fp32_groups",
    )
    assert (c.ZERO_FILE_PREFIX, c.BF16_ZERO_FILE_PREFIX, c.OPTIM_FILE_SUFFIX, c.MODEL_FILE_SUFFIX) == (
        "zero_pp_rank_",
        "bf16_zero_pp_rank_",
        "_optim_states.pt",
        "_model_states.pt",
    )
    assert (
        c.PARAM_SHAPES is layout.PARAM_SHAPES and c.UNIVERSAL_CHECKPOINT_INFO == "universal_checkpoint_info"
    )
    # the constants agree with the file names the engine writes
    path = layout.zero_optim_states_path("d", "t", 3)
    assert path.endswith(f"{c.ZERO_FILE_PREFIX}3_{c.MODEL_FILE_PREFIX}00{c.OPTIM_FILE_SUFFIX}")


def test_rng_tracker_and_offload_names():
    from deepspeed.checkpointing import (
        _CUDA_RNG_STATE_TRACKER,
        _MODEL_PARALLEL_RNG_TRACKER_NAME,
        get_cuda_rng_tracker,
    )
    from deepspeed.runtime.activation_checkpointing import checkpointing
    from deepspeed.runtime.zero.offload_config import (
        DeepSpeedZeroOffloadOptimizerConfig,
        DeepSpeedZeroOffloadParamConfig,
        OffloadDeviceEnum,
        OffloadStateTypeEnum,
    )

    assert (
        _MODEL_PARALLEL_RNG_TRACKER_NAME
        == "model-parallel-rng"
        == checkpointing._MODEL_PARALLEL_RNG_TRACKER_NAME
    )
    assert _CUDA_RNG_STATE_TRACKER is get_cuda_rng_tracker()
    assert DeepSpeedZeroOffloadOptimizerConfig(device=OffloadDeviceEnum.cpu).device == "cpu"
    assert DeepSpeedZeroOffloadParamConfig(device="cpu").pin_memory is True
    assert {e.value for e in OffloadStateTypeEnum} >= {"optim_states", "hp_params", "lp_params", "lp_grads"}


def test_compression_helpers_and_refusals():
    import torch

    from deepspeed.compression.helper import recursive_getattr, recursive_setattr

    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.nn.ReLU())
    assert recursive_getattr(model, "0.0") is model[0][0]
    replacement = torch.nn.Linear(2, 3)
    recursive_setattr(model, "0.0", replacement)
    assert model[0][0] is replacement and recursive_getattr(model, "0.0.weight").shape == (3, 2)
    with pytest.raises(ImportError, match="Compression .* is not implemented"):
        from deepspeed.compression.helper import module_replacement  # noqa: F401
    with pytest.raises(ImportError, match="init_compression is not provided"):
        from deepspeed.compression import init_compression  # noqa: F401
    with pytest.raises(AttributeError):
        deepspeed.compression.no_such_name  # noqa: B018


def test_api_surface_page_is_current():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "gen_api_surface.py"
    spec = importlib.util.spec_from_file_location("gen_api_surface", path)
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.main(["--check"]) == 0, "run: python docs/gen_api_surface.py"
    page = generator.OUTPUT.read_text()
    for module, path_, _ in SIGNATURES:
        if module.startswith("deepspeed"):
            assert f"`{path_.split('.')[0]}`" in page, path_


def test_every_refused_name_is_refused_with_its_reason():
    import importlib

    from ds_engine.not_provided import NOT_PROVIDED, NotProvidedError

    for module, names in NOT_PROVIDED.items():
        mod = importlib.import_module(module)
        for name, reason in names.items():
            with pytest.raises(NotProvidedError) as info:
                getattr(mod, name)
            assert reason in str(info.value) and f"{module}.{name}" in str(info.value)
