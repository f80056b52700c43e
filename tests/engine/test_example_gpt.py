"""The README's demo for real: examples/gpt/train.py on 2 CPU ranks through the ``deepspeed`` launcher.

Loss falls, a checkpoint lands in DeepSpeed's layout, and a second launch resumes from it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "gpt" / "train.py"
CONSOLE = Path(sys.executable).parent / "deepspeed"
TINY = [
    "--vocab",
    "64",
    "--seq_len",
    "16",
    "--n_layer",
    "1",
    "--n_head",
    "2",
    "--n_embd",
    "32",
    "--samples",
    "512",
    "--log_interval",
    "4",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    config = json.loads((ROOT / "examples" / "gpt" / "ds_config.json").read_text())
    config["optimizer"]["params"]["lr"] = 3e-3
    config["scheduler"]["params"]["warmup_max_lr"] = 3e-3
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(config))
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", HOME=str(tmp_path), OMP_NUM_THREADS="1")
    cmd = [
        str(CONSOLE),
        "--num_gpus",
        "2",
        "--master_port",
        str(_free_port()),
        str(SCRIPT),
        "--deepspeed",
        "--deepspeed_config",
        str(path),
        *TINY,
        "--save_dir",
        str(tmp_path / "ckpt"),
        "--metrics_json",
        str(tmp_path / "metrics"),
        *extra,
    ]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)


@pytest.mark.timeout(300)
@pytest.mark.skipif(not CONSOLE.exists(), reason="the deepspeed console script is not installed")
def test_gpt_example_trains_saves_and_resumes(tmp_path: Path) -> None:
    first = _launch(tmp_path, "--steps", "12")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    metrics = [json.loads((tmp_path / f"metrics.rank{r}").read_text()) for r in range(2)]
    losses = [loss for _, loss in metrics[0]["losses"]]
    assert [step for step, _ in metrics[0]["losses"]] == [4, 8, 12]
    assert losses[-1] < losses[0] - 0.1, losses
    assert metrics[0]["losses"] == metrics[1]["losses"]  # the logged loss is the global mean
    assert (tmp_path / "ckpt" / "latest").read_text() == "global_step12"
    state = torch.load(tmp_path / "ckpt" / "global_step12" / "mp_rank_00_model_states.pt", weights_only=True)
    assert state["global_steps"] == 12 and state["dp_world_size"] == 2 and state["epoch"] >= 0

    second = _launch(tmp_path, "--steps", "16", "--resume")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    resumed = json.loads((tmp_path / "metrics.rank0").read_text())
    assert [step for step, _ in resumed["losses"]] == [16]
    assert (tmp_path / "ckpt" / "latest").read_text() == "global_step16"
