"""Debian's OpenMPI `mpirun` starts ranks that find each other through mpi4py and form a gloo group.

Each rank reports into its own file: mpirun's stdout forwarding may splice two ranks' lines together
when Python writes text and newline separately (it does under PYTHONUNBUFFERED=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(180)]

RANK_SCRIPT = """
import sys, torch, ds_comm
ds_comm.init_distributed(dist_backend="gloo")
env = ds_comm.last_discovery()
t = torch.tensor([float(ds_comm.get_rank() + 1)])
ds_comm.all_reduce(t)
with open(f"{sys.argv[1]}/rank{ds_comm.get_rank()}.txt", "w") as report:
    report.write(f"rank={ds_comm.get_rank()} world={ds_comm.get_world_size()} local={env.local_rank} "
                 f"sum={t.item():g} addr_from={env.sources['master_addr']} rank_from={env.sources['rank']}")
"""


def mpirun_command(n: int, *argv: str) -> list[str]:
    """mpirun with what this machine needs: root allowed, more ranks than cores, loopback only."""
    return [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        str(n),
        "--mca",
        "btl",
        "self,tcp",
        "--mca",
        "btl_tcp_if_include",
        "lo",
        "-x",
        "GLOO_SOCKET_IFNAME=lo",
        "-x",
        "PATH",
        *argv,
    ]


@pytest.fixture
def mpi_env():
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun (Debian's openmpi-bin) is not installed")
    pytest.importorskip("mpi4py")
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_mpirun_forms_a_gloo_world_through_mpi4py(mpi_env, tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    out = subprocess.run(
        mpirun_command(2, sys.executable, str(script), str(tmp_path)),
        capture_output=True,
        text=True,
        env=mpi_env,
        timeout=150,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)]
    assert lines == [
        "rank=0 world=2 local=0 sum=3 addr_from=mpi4py (broadcast from rank 0) rank_from=OMPI_COMM_WORLD_RANK",
        "rank=1 world=2 local=1 sum=3 addr_from=mpi4py (broadcast from rank 0) rank_from=OMPI_COMM_WORLD_RANK",
    ]
