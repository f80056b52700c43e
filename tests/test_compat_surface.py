"""DeepSpeed's public names resolve at DeepSpeed's paths through the meta-package."""

from __future__ import annotations

import subprocess
import sys

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

    assert {"WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest"} <= set(VALID_LR_SCHEDULES)


def test_zero3_names_at_deepspeed_paths():
    import torch

    import deepspeed.runtime.zero.partition_parameters as pp
    import deepspeed.zero as zero
    from ds_zero.stage3 import GatheredParameters, Init

    assert zero.Init is Init and zero.GatheredParameters is GatheredParameters and pp.Init is Init
    assert pp._orig_torch_arange is torch.arange and pp._orig_torch_empty is torch.empty
    make = pp.zero_wrapper_for_fp_tensor_constructor(torch.ones, torch.bfloat16, torch.device("cpu"))
    assert make(3).dtype == torch.bfloat16 and make(3, dtype=torch.int64).dtype == torch.int64
