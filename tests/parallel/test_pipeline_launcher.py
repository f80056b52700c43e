"""The real ``deepspeed`` launcher runs a pipeline script shaped like DeepSpeedExamples'
``training/pipeline_parallelism/train.py`` (train_pipe) on 2 CPU ranks, with that example's ds_config.json.

The example itself cannot run here unchanged: it calls ``torch.cuda.set_device`` (CUDA only), defaults to
the NCCL backend, and downloads CIFAR-10 through torchvision (not installed; nothing can be downloaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ds_comm.testing import free_port

SCRIPT = Path(__file__).parent / "scripts" / "pipe_train.py"
DEEPSPEED = Path(sys.executable).parent / "deepspeed"
# The example's ds_config.json (train_batch_size 256, micro 8, Adam 1e-3, steps_per_print 10).
EXAMPLE_CONFIG = {
    "train_batch_size": 256,
    "train_micro_batch_size_per_gpu": 8,
    "optimizer": {"type": "Adam", "params": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8}},
    "steps_per_print": 10,
    "wall_clock_breakdown": False,
}


@pytest.mark.timeout(300)
def test_example_shaped_pipeline_trains_under_the_launcher(tmp_path: Path) -> None:
    if not DEEPSPEED.exists():
        pytest.skip("the deepspeed console script is not installed")
    config = tmp_path / "ds_config.json"
    config.write_text(json.dumps(EXAMPLE_CONFIG))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [
        str(DEEPSPEED),
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        str(SCRIPT),
        f"--deepspeed_config={config}",
        "-p",
        "2",
        "--steps=3",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["stage"] for r in ranks] == [0, 1]
    assert ranks[0]["gas"] == 32 and ranks[0]["steps"] == 3  # 256 / (8 x 1 data-parallel replica)
    assert ranks[0]["losses"] == ranks[1]["losses"]  # every stage reports the last stage's loss
    assert all(loss == loss and 1.0 < loss < 4.0 for loss in ranks[0]["losses"])  # ~ln(10) at the start
