"""The rank shim: each starter's variables become DeepSpeed's, then the user's command is exec'd."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _launch_util import SCRIPTS

from ds_launch.errors import LaunchError
from ds_launch.rank_exec import map_rank_env, prepare

CASES = {
    "openmpi": {
        "OMPI_COMM_WORLD_RANK": "5",
        "OMPI_COMM_WORLD_SIZE": "8",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
    },
    "mpich": {"PMI_RANK": "5", "PMI_SIZE": "8", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "4"},
    "impi": {"PMI_RANK": "5", "PMI_SIZE": "8", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "4"},
    "mvapich": {
        "MV2_COMM_WORLD_RANK": "5",
        "MV2_COMM_WORLD_SIZE": "8",
        "MV2_COMM_WORLD_LOCAL_RANK": "1",
        "MV2_COMM_WORLD_LOCAL_SIZE": "4",
    },
    "slurm": {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_NNODES": "2",
    },
    "torchelastic": {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2",
    },
}
EXPECTED = {
    "RANK": "5",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "1",
    "LOCAL_SIZE": "4",
    "CROSS_RANK": "1",
    "CROSS_SIZE": "2",
}


@pytest.mark.parametrize("scheme", sorted(CASES))
def test_each_scheme_maps_to_deepspeeds_variables(scheme):
    env = dict(CASES[scheme])
    assert map_rank_env(env, scheme=scheme) == 1
    assert {key: env[key] for key in EXPECTED} == EXPECTED


def test_missing_or_bad_variables_are_clear_errors():
    with pytest.raises(
        LaunchError, match="OMPI_COMM_WORLD_RANK is not set: was this rank started by openmpi"
    ):
        map_rank_env({}, scheme="openmpi")
    with pytest.raises(LaunchError, match="PMI_RANK='x' is not an integer"):
        map_rank_env({**CASES["mpich"], "PMI_RANK": "x"}, scheme="mpich")


def test_prepare_builds_the_user_command():
    env = dict(CASES["openmpi"])
    argv = prepare(["--scheme=openmpi", "--python=/py", "train.py", "--deepspeed", "--local_rank=9"], env)
    assert argv == ["/py", "-u", "train.py", "--local_rank=1", "--deepspeed", "--local_rank=9"]
    argv = prepare(["--scheme=openmpi", "--no_local_rank", "./run.sh", "--module"], dict(CASES["openmpi"]))
    assert argv == ["./run.sh", "--module"]  # flags after the script belong to the script


@pytest.mark.timeout(60)
def test_real_exec_with_core_binding_and_rank_log(tmp_path):
    core = sorted(os.sched_getaffinity(0))[-1]
    out = tmp_path / "out"
    out.mkdir()
    env = {
        **os.environ,
        **CASES["openmpi"],
        "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
        "OMPI_COMM_WORLD_LOCAL_RANK": "0",
        "OUT_DIR": str(out),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1234",
    }
    cmd = [
        sys.executable,
        "-m",
        "ds_launch.rank_exec",
        "--scheme=openmpi",
        f"--python={sys.executable}",
        "--bind_cores_to_rank",
        f"--bind_core_list={core}",
        f"--rank_log_dir={tmp_path / 'logs'}",
        "--log_prefix=job",
        str(SCRIPTS / "envdump.py"),
        "x y",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "rank5.json").read_text())
    assert data["argv"] == ["--local_rank=0", "x y"]
    assert data["affinity"] == [core] and data["OMP_NUM_THREADS"] == "1"
    assert (data["LOCAL_SIZE"], data["CROSS_RANK"], data["CROSS_SIZE"]) == ("1", "5", "8")
    assert (tmp_path / "logs" / "job_rank5.log").read_text().splitlines() == [
        "hello from rank 5",
        "stderr of rank 5",
    ]
    assert done.stdout == ""


@pytest.mark.timeout(60)
def test_shim_error_is_one_line_exit_2():
    done = subprocess.run(
        [sys.executable, "-m", "ds_launch.rank_exec", "--scheme=mpich", "x.py"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == "ds_launch.rank_exec: error: PMI_RANK is not set: was this rank started by mpich?"
    )
