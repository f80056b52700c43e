"""The runner registry and the shared runner helpers."""

from __future__ import annotations

import shutil

import pytest
from _launch_jobs import job

from ds_launch.errors import LaunchError
from ds_launch.runners import RUNNERS, get_runner


def test_registry_holds_every_launcher_case_insensitively():
    assert set(RUNNERS) == {"pdsh", "openmpi", "mvapich", "slurm", "mpich", "impi"}
    assert get_runner("OpenMPI").name == "openmpi"
    with pytest.raises(LaunchError, match="--launcher 'torque' is unknown"):
        get_runner("torque")


def test_launcher_args_are_split_like_a_shell_and_bad_quoting_is_an_error():
    runner = get_runner("openmpi")(job(launcher_args="--mca x 'a b'"))
    assert runner.launcher_args() == ["--mca", "x", "a b"]
    with pytest.raises(LaunchError, match="--launcher_args"):
        get_runner("openmpi")(job(launcher_args="'unclosed")).launcher_args()


def test_default_remote_command_is_quoted_ssh():
    runner = get_runner("openmpi")(job(ssh_port=2200))
    cmd = runner.remote_cmd("worker-0", ["hostname", "-I"])
    assert cmd == [
        "ssh",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "BatchMode=yes",
        "-p",
        "2200",
        "worker-0",
        "hostname -I",
    ]


def test_backend_exists_looks_on_path():
    assert get_runner("pdsh")(job()).backend_exists() == (shutil.which("pdsh") is not None)
    assert get_runner("slurm")(job()).backend_exists() == (shutil.which("sinfo") is not None)
