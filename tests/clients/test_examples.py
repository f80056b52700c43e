"""The client examples (``examples/clients/``) run as their docstrings say, and resume.

Without a GPU, the Trainer and Accelerate examples run as one process (the clients count several
DeepSpeed processes only with an accelerator backend; see ``examples/clients/README.md``); on GPUs
every example runs on all local devices.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _launching import BIN, free_port, run_checked

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "clients"
GPUS = torch.cuda.device_count()


def _hf(tmp_path: Path, ranks: int, *args: str) -> str:
    return run_checked(
        [
            str(BIN / "deepspeed"),
            "--num_gpus",
            str(ranks),
            "--master_port",
            str(free_port()),
            str(EXAMPLES / "hf_trainer.py"),
            "--deepspeed",
            str(EXAMPLES / "ds_config_zero2.json"),
            "--output_dir",
            str(tmp_path / "hf"),
            "--per_device_train_batch_size",
            "4",
            "--samples",
            "128",
            "--report_to",
            "none",
            "--save_steps",
            "2",
            *args,
        ],
        tmp_path,
    )


def _accelerate(tmp_path: Path, ranks: int, *args: str) -> str:
    return run_checked(
        [
            str(BIN / "accelerate"),
            "launch",
            "--use_deepspeed",
            "--num_processes",
            str(ranks),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            str(EXAMPLES / "accelerate_train.py"),
            "--ds_config",
            str(EXAMPLES / "ds_config_zero3.json"),
            "--save_dir",
            str(tmp_path / "acc"),
            "--batch_size",
            "2",
            *args,
        ],
        tmp_path,
    )


@pytest.mark.timeout(420)
def test_hf_trainer_example_trains_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    ranks = max(GPUS, 1)
    assert "after 2 steps" in _hf(tmp_path, ranks, "--max_steps", "2")
    assert (tmp_path / "hf" / "checkpoint-2" / "global_step2").is_dir()
    log = _hf(
        tmp_path, ranks, "--max_steps", "4", "--resume_from_checkpoint", str(tmp_path / "hf" / "checkpoint-2")
    )
    assert "after 4 steps" in log
    assert (tmp_path / "hf" / "model.safetensors").is_file()


@pytest.mark.timeout(420)
def test_accelerate_example_trains_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    pytest.importorskip("transformers")
    ranks = max(GPUS, 1)
    assert "step 2 loss" in _accelerate(tmp_path, ranks, "--steps", "2")
    assert "step 3 loss" in _accelerate(tmp_path, ranks, "--steps", "3", "--resume")
    assert json.loads((tmp_path / "acc" / "progress.json").read_text()) == {"step": 3}


@pytest.mark.cuda
@pytest.mark.timeout(420)
@pytest.mark.skipif(GPUS == 0, reason="Lightning's DeepSpeedStrategy needs CUDA GPUs")
def test_lightning_example_trains_resumes_and_consolidates(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    script, out = str(EXAMPLES / "lightning_train.py"), str(tmp_path / "pl")
    run_checked(
        [str(BIN / "python"), script, "--devices", str(GPUS), "--epochs", "1", "--save_dir", out], tmp_path
    )
    run_checked(
        [
            str(BIN / "python"),
            script,
            "--devices",
            str(GPUS),
            "--epochs",
            "2",
            "--save_dir",
            out,
            "--resume_from",
            str(tmp_path / "pl" / "epoch=0.ckpt"),
            "--consolidate",
        ],
        tmp_path,
    )
    state = torch.load(tmp_path / "pl" / "model_fp32.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and all(t.dtype == torch.float32 for t in state["state_dict"].values())
