"""Multi-node launches on this one machine: pdsh (``-R exec``) over two host names, OpenMPI's real
``mpirun`` through ``--launcher openmpi``, and two ``--no_ssh`` node processes forming one world.

The ranks join a real gloo process group and all-reduce (rank + 1), so a wrong RANK, WORLD_SIZE or
MASTER_* anywhere would hang or give the wrong sum.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from _e2e_util import MPI_ROOT_ENV, SCRIPTS, free_port, have, read_ranks, run_deepspeed, start_deepspeed

REPORT = str(SCRIPTS / "rank_report.py")
TWO_NODES = "localhost slots=2\n127.0.0.1 slots=2\n"


@pytest.mark.timeout(180)
@pytest.mark.skipif(not have("pdsh"), reason="needs pdsh")
def test_pdsh_two_hosts_form_one_world(tmp_path, out_dir, launch_env):
    (tmp_path / "hostfile").write_text(TWO_NODES)
    env = dict(launch_env, OUT_DIR=str(out_dir), ALLREDUCE="1")
    done = run_deepspeed(
        [
            "--hostfile=hostfile",
            "--launcher",
            "PDSH",
            "--launcher_args",
            "-R exec",
            "--master_addr",
            "127.0.0.1",
            f"--master_port={free_port()}",
            REPORT,
            "--deepspeed",
        ],
        env=env,
        cwd=tmp_path,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr
    seen = read_ranks(out_dir)
    assert sorted(seen) == [0, 1, 2, 3]
    for rank, data in seen.items():
        node = rank // 2
        assert (
            data["LOCAL_RANK"],
            data["CROSS_RANK"],
            data["CROSS_SIZE"],
            data["WORLD_SIZE"],
            data["LOCAL_SIZE"],
        ) == (str(rank % 2), str(node), "2", "4", "2")
        assert data["argv"] == [f"--local_rank={rank % 2}", "--deepspeed"]
        assert (data["dist_rank"], data["dist_world"], data["all_reduce"]) == (rank, 4, 10.0)
    # pdsh prefixes each line with the host that printed it
    assert {line.split(":")[0] for line in done.stdout.splitlines()} == {"localhost", "127.0.0.1"}


@pytest.mark.timeout(120)
@pytest.mark.skipif(not have("pdsh"), reason="needs pdsh")
def test_pdsh_infers_master_addr_with_hostname_i(tmp_path, out_dir, launch_env):
    words = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False).stdout.split()
    if not words:
        pytest.skip("'hostname -I' prints no address here")
    (tmp_path / "hostfile").write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    done = run_deepspeed(
        ["-H", "hostfile", "--launcher_args=-R exec", REPORT],
        env=dict(launch_env, OUT_DIR=str(out_dir)),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert {d["MASTER_ADDR"] for d in read_ranks(out_dir).values()} == {words[0]}


@pytest.mark.mpi
@pytest.mark.timeout(180)
@pytest.mark.skipif(not have("mpirun") or not have("ompi_info"), reason="needs OpenMPI")
def test_openmpi_mpirun_launch(tmp_path, out_dir, launch_env):
    # One host: OpenMPI sees localhost and 127.0.0.1 as the same node, so --force_multi takes the
    # multi-node path with a single-host hostfile.
    (tmp_path / "hostfile").write_text("localhost slots=2\n")
    env = dict(launch_env, OUT_DIR=str(out_dir), ALLREDUCE="1")
    if os.geteuid() == 0:
        env.update(MPI_ROOT_ENV)
    done = run_deepspeed(
        [
            "-H",
            "hostfile",
            "--force_multi",
            "--launcher",
            "openmpi",
            "--no_ssh_check",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "--launcher_args",
            "--oversubscribe --mca btl_tcp_if_include lo",
            REPORT,
            "x",
        ],
        env=env,
        cwd=tmp_path,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr
    seen = read_ranks(out_dir)
    assert sorted(seen) == [0, 1]
    for rank, data in seen.items():
        assert (
            data["LOCAL_RANK"],
            data["WORLD_SIZE"],
            data["LOCAL_SIZE"],
            data["CROSS_RANK"],
            data["CROSS_SIZE"],
        ) == (str(rank), "2", "2", "0", "1")
        assert data["argv"] == [f"--local_rank={rank}", "x"]
        assert (data["dist_world"], data["all_reduce"]) == (2, 3.0)


@pytest.mark.timeout(180)
def test_two_no_ssh_nodes_form_one_world(tmp_path, out_dir, launch_env):
    (tmp_path / "hostfile").write_text("node-a slots=2\nnode-b slots=2\n")  # names need not resolve
    env = dict(launch_env, OUT_DIR=str(out_dir), ALLREDUCE="1")
    port = str(free_port())
    nodes = [
        start_deepspeed(
            [
                "--hostfile",
                "hostfile",
                "--no_ssh",
                f"--node_rank={n}",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                REPORT,
            ],
            env=env,
            cwd=tmp_path,
        )
        for n in (0, 1)
    ]
    try:
        outputs = [node.communicate(timeout=150) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.terminate()
                node.wait(timeout=30)
    assert [node.returncode for node in nodes] == [0, 0], outputs
    seen = read_ranks(out_dir)
    assert sorted(seen) == [0, 1, 2, 3]
    for rank, data in seen.items():
        assert (data["CROSS_RANK"], data["LOCAL_RANK"], data["all_reduce"], data["dist_world"]) == (
            str(rank // 2),
            str(rank % 2),
            10.0,
            4,
        )
