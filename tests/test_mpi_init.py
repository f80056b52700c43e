"""`mpirun -n 2 python -c "import deepspeed; deepspeed.init_distributed(); ..."` under Debian's OpenMPI.

Each rank reports into its own file: mpirun's stdout forwarding may splice two ranks' lines together
when Python writes text and newline separately (it does under PYTHONUNBUFFERED=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(180)]

CODE = (
    "import torch, deepspeed, deepspeed.comm as dist; deepspeed.init_distributed(dist_backend='gloo'); "
    "t = torch.ones(1) * (dist.get_rank() + 1); dist.all_reduce(t); "
    "open(f'{sys.argv[1]}/rank{dist.get_rank()}.txt', 'w').write("
    "f\"rank {dist.get_rank()} of {dist.get_world_size()} sum {int(t.item())} local {os.environ['LOCAL_RANK']}\")"
)


def test_mpirun_deepspeed_init_distributed(tmp_path):
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun (Debian's openmpi-bin) is not installed")
    pytest.importorskip("mpi4py")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    cmd = [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        "2",
        "--mca",
        "btl",
        "self,tcp",
        "--mca",
        "btl_tcp_if_include",
        "lo",
        "-x",
        "GLOO_SOCKET_IFNAME=lo",
        sys.executable,
        "-c",
        "import os, sys; " + CODE,
        str(tmp_path),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=150)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)]
    assert lines == ["rank 0 of 2 sum 3 local 0", "rank 1 of 2 sum 3 local 1"]
