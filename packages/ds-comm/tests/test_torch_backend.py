"""DeepSpeed's ``TorchBackend`` on 2 gloo ranks, and ``mpi_discovery`` under Debian's OpenMPI ``mpirun``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

import ds_comm
from ds_comm.testing import free_port, run_distributed
from ds_comm.torch_backend import TorchBackend


def _backend_collectives():
    backend = TorchBackend("gloo", None, None)  # the harness formed the group: it is kept
    t = torch.ones(2) * (backend.get_rank() + 1)
    backend.all_reduce(t)
    out = torch.empty(2 * backend.get_world_size())
    backend.get_all_gather_function()(out, torch.full((2,), float(backend.get_rank())))
    return (
        backend.is_initialized(),
        backend.backend,
        t.tolist(),
        out.tolist(),
        backend.has_all_gather_into_tensor(),
    )


@pytest.mark.timeout(120)
def test_torch_backend_answers_collectives():
    results = run_distributed(_backend_collectives, world_size=2, timeout=100)
    for initialized, name, summed, gathered, has_agit in results:
        assert initialized and name == "gloo" and has_agit
        assert summed == [3.0, 3.0] and gathered == [0.0, 0.0, 1.0, 1.0]


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_collective'"):
        TorchBackend.__getattr__(object.__new__(TorchBackend), "not_a_collective")


RANK_SCRIPT = """
import os, sys, torch, torch.distributed as dist
from ds_comm import mpi_discovery
world = mpi_discovery(distributed_port=int(sys.argv[2]))
dist.init_process_group("gloo")  # env:// from what mpi_discovery exported
t = torch.ones(1) * (dist.get_rank() + 1)
dist.all_reduce(t)
with open(f"{sys.argv[1]}/rank{dist.get_rank()}.txt", "w") as report:
    report.write(f"{os.environ['RANK']} {os.environ['WORLD_SIZE']} {os.environ['LOCAL_RANK']} {os.environ['MASTER_PORT']} "
                 f"{t.item():g}")
dist.destroy_process_group()
"""


@pytest.mark.mpi
@pytest.mark.timeout(180)
def test_mpi_discovery_exports_the_torchrun_variables(tmp_path):
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun (Debian's openmpi-bin) is not installed")
    pytest.importorskip("mpi4py")
    from test_mpi import mpirun_command

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    port = free_port()
    out = subprocess.run(
        mpirun_command(2, sys.executable, str(script), str(tmp_path), str(port)),
        capture_output=True,
        text=True,
        env=env,
        timeout=150,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    reports = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert reports == [f"0 2 0 {port} 3", f"1 2 1 {port} 3"]


def test_mpi_discovery_without_mpi4py_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("mpi4py") is not None:
        pytest.skip("mpi4py is installed here: test_mpi_discovery_exports_the_torchrun_variables covers it")
    with pytest.raises(RuntimeError, match="mpi4py"):
        ds_comm.mpi_discovery()
