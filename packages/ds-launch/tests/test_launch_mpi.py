"""Command construction for the MPI runners.

Only OpenMPI's ``mpirun`` exists on this machine (its real runs are in tests/launch); MPICH, Intel MPI
and MVAPICH are not installed here, so their commands are checked as argument lists.
"""

from __future__ import annotations

import pytest
from _launch_jobs import PY, job, shim

from ds_launch.errors import LaunchError
from ds_launch.runners import get_runner, mpi

RANK_ENV = ["MASTER_ADDR=10.0.0.1", "MASTER_PORT=29500"]


def test_openmpi_command():
    cmd = get_runner("openmpi")(job(launcher_args="--oversubscribe")).get_cmd()
    assert cmd == [
        "mpirun",
        "-n",
        "4",
        "-hostfile",
        "/job/hf",
        "--mca",
        "btl",
        "^openib",
        "--mca",
        "btl_tcp_if_include",
        "eth0",
        "--oversubscribe",
        "-x",
        "UCX_TLS=tcp",
        "-x",
        "NCCL_DEBUG=INFO",
        "-x",
        RANK_ENV[0],
        "-x",
        RANK_ENV[1],
        *shim("openmpi"),
    ]


def test_openmpi_keeps_a_user_btl_interface_and_ssh_port():
    cmd = get_runner("openmpi")(job(launcher_args="--mca btl_tcp_if_include lo", ssh_port=2222)).get_cmd()
    assert cmd.count("btl_tcp_if_include") == 1 and cmd[cmd.index("btl_tcp_if_include") + 1] == "lo"
    assert cmd[cmd.index("plm_rsh_args") - 1 : cmd.index("plm_rsh_args") + 2] == [
        "--mca",
        "plm_rsh_args",
        "-p 2222",
    ]


def test_mpich_command():
    cmd = get_runner("mpich")(job(module=True, no_local_rank=True)).get_cmd()
    assert cmd == [
        "mpirun",
        "-n",
        "4",
        "-ppn",
        "2",
        "-genv",
        "NCCL_DEBUG",
        "INFO",
        "-genv",
        "MASTER_ADDR",
        "10.0.0.1",
        "-genv",
        "MASTER_PORT",
        "29500",
        "-genv",
        "WORLD_SIZE",
        "4",
        "-genv",
        "LOCAL_SIZE",
        "2",
        "-hosts",
        "worker-0,worker-1",
        *shim("mpich", "--module", "--no_local_rank"),
    ]


def test_impi_command_turns_off_impi_pinning_and_binds_cores_itself():
    cmd = get_runner("impi")(job(bind_cores_to_rank=True, bind_core_list="0-7")).get_cmd()
    assert cmd[:5] == ["mpirun", "-n", "4", "-ppn", "2"]
    assert cmd[cmd.index("I_MPI_PIN") - 1 : cmd.index("I_MPI_PIN") + 2] == ["-genv", "I_MPI_PIN", "0"]
    assert cmd[cmd.index("-m") + 2 :][:3] == ["--scheme=impi", f"--python={PY}", "--bind_cores_to_rank"]
    assert "--bind_core_list=0-7" in cmd


def test_mvapich_command_and_host_list(tmp_path, monkeypatch):
    monkeypatch.setattr(mpi, "MVAPICH_TMP_HOSTFILE", str(tmp_path / "mv2_hosts"))
    runner = get_runner("mvapich")(job(no_python=True, enable_each_rank_log="/logs"))
    runner.prepare()
    assert (tmp_path / "mv2_hosts.J1").read_text() == "worker-0\nworker-1\n"
    cmd = runner.get_cmd()
    assert cmd[:7] == ["mpirun", "-np", "4", "-ppn", "2", "--hostfile", str(tmp_path / "mv2_hosts.J1")]
    assert "MV2_SMP_USE_CMA=0" in cmd and "MV2_SUPPORT_DL=1" in cmd
    assert cmd[-6:] == [
        "--scheme=mvapich",
        "--rank_log_dir=/logs",
        "train.py",
        "--deepspeed",
        "--deepspeed_config",
        "ds.json",
    ]
    assert not any(arg.startswith("--python=") for arg in cmd)  # --no_python: executed directly


@pytest.mark.parametrize("name", ["openmpi", "mpich", "impi", "mvapich"])
def test_mpi_runners_refuse_filters_and_limits(name):
    with pytest.raises(LaunchError, match=f"--launcher {name} does not support --include/--exclude"):
        get_runner(name)(job(include="worker-0")).validate()
    with pytest.raises(LaunchError, match="does not support --num_nodes/--num_gpus"):
        get_runner(name)(job(num_gpus=1)).validate()


@pytest.mark.parametrize("name", ["mpich", "impi", "mvapich"])
def test_ppn_runners_need_equal_slot_counts(name):
    with pytest.raises(LaunchError, match="same slot count on every host"):
        get_runner(name)(job(resources={"a": [0, 1], "b": [0]})).validate()
