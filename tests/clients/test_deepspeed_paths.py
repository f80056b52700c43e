"""DeepSpeed's module paths that clients import (beyond the engine's): ``deepspeed.utils``,
``deepspeed.utils.zero_to_fp32``, ``deepspeed.checkpoint.utils``, the ``deepspeed.ops`` submodules."""

from __future__ import annotations

import collections
import importlib
import logging
import subprocess
import sys

import pytest
import torch

import deepspeed
import ds_comm
from ds_comm.testing import run_distributed


def test_utils_logger_is_the_engines_logger() -> None:
    from deepspeed.utils import logger
    from deepspeed.utils import logging as ds_logging

    assert logger is ds_logging.logger is logging.getLogger("ds_engine")
    assert deepspeed.utils.logging.logger is logger  # Lightning's spelling


@pytest.mark.parametrize(
    ("path", "name", "source"),
    [
        ("deepspeed.ops.adam.fused_adam", "FusedAdam", "ds_kernels"),
        ("deepspeed.ops.adam.cpu_adam", "DeepSpeedCPUAdam", "ds_kernels"),
        ("deepspeed.ops.lamb.fused_lamb", "FusedLamb", "ds_kernels"),
        ("deepspeed.ops.lion.fused_lion", "FusedLion", "ds_kernels"),
        ("deepspeed.ops.lion.cpu_lion", "DeepSpeedCPULion", "ds_kernels"),
        ("deepspeed.ops.adagrad.cpu_adagrad", "DeepSpeedCPUAdagrad", "ds_kernels"),
        ("deepspeed.utils.zero_to_fp32", "get_fp32_state_dict_from_zero_checkpoint", "ds_zero.consolidate"),
        ("deepspeed.utils.zero_to_fp32", "convert_zero_checkpoint_to_fp32_state_dict", "ds_zero.consolidate"),
        ("deepspeed.utils.zero_to_fp32", "load_state_dict_from_zero_checkpoint", "ds_zero.consolidate"),
        ("deepspeed.utils.zero_to_fp32", "get_optim_files", "ds_zero.consolidate"),
        ("deepspeed.utils.zero_to_fp32", "get_model_state_file", "ds_zero.consolidate"),
    ],
)
def test_deepspeed_paths_alias_the_implementation(path: str, name: str, source: str) -> None:
    assert getattr(importlib.import_module(path), name) is getattr(importlib.import_module(source), name)


def test_zero_to_fp32_runs_as_a_module_and_reports_a_missing_checkpoint(tmp_path) -> None:  # noqa: ANN001
    proc = subprocess.run(
        [sys.executable, "-m", "deepspeed.utils.zero_to_fp32", str(tmp_path / "nope"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("zero_to_fp32: error:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_clone_tensors_for_torch_save_compacts_and_moves() -> None:
    from deepspeed.checkpoint.utils import clone_tensors_for_torch_save

    Pair = collections.namedtuple("Pair", "a b")
    big = torch.arange(1000.0)
    view = big[10:14]
    item = {"w": view, "nested": [Pair(view, 3), (big[:2], "x")], "n": 5}
    out = clone_tensors_for_torch_save(item)
    assert isinstance(out["nested"][0], Pair) and out["nested"][0].b == 3 and out["n"] == 5
    cloned = out["w"]
    assert torch.equal(cloned, view) and cloned.device.type == "cpu"
    assert cloned.untyped_storage().nbytes() == 4 * cloned.element_size()  # not the 1000-element storage
    cloned += 1
    assert torch.equal(view, torch.arange(10.0, 14.0))  # a copy, not a view
    assert out["nested"][1][0].untyped_storage().data_ptr() != big.untyped_storage().data_ptr()


def _log_dist_on_each_rank() -> list[str]:
    from deepspeed.utils import log_dist, logger

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    log_dist("only rank 1", ranks=[1])
    log_dist("everyone", ranks=[-1])
    log_dist("nobody listed")
    logger.removeHandler(handler)
    return seen


@pytest.mark.timeout(120)
def test_log_dist_logs_on_the_listed_ranks() -> None:
    assert not ds_comm.is_initialized()
    results = run_distributed(_log_dist_on_each_rank, world_size=2, timeout=100)
    assert results == [["[Rank 0] everyone"], ["[Rank 1] only rank 1", "[Rank 1] everyone"]]
