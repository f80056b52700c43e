"""A launcher-only install: ``pip install ds-launch`` into a fresh venv pulls no torch (a login node), and
its ``deepspeed`` starts a 2-rank job whose ranks run in another venv that has torch (``--no_python
--no_local_rank <that venv's python> train.py``, as DeepSpeed documents for non-Python launchers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _e2e_util import SCRIPTS, free_port, read_ranks

ROOT = Path(__file__).parents[2]


def _base_python() -> str:
    """The interpreter this test's venv was made from (a new venv must not inherit its packages)."""
    return getattr(sys, "_base_executable", None) or sys.executable


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_launcher_only_venv_has_no_torch_and_launches_ranks_that_do(tmp_path, out_dir, launch_env):
    venv = tmp_path / "login-node"
    subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    installed = subprocess.run(
        [*pip, str(ROOT / "packages" / "ds-accel"), str(ROOT / "packages" / "ds-launch")],
        capture_output=True,
        text=True,
        timeout=420,
    )
    if installed.returncode != 0 and "Could not find a version" in installed.stderr:
        pytest.skip(
            f"no package index reachable for ds-launch's dependencies: {installed.stderr.splitlines()[-1]}"
        )
    assert installed.returncode == 0, installed.stderr[-2000:]
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.lower()
    assert "ds-launch==" in listed and "torch==" not in listed and "nvidia" not in listed, listed

    env = dict(launch_env, OUT_DIR=str(out_dir), ALLREDUCE="1")
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [
            str(venv / "bin" / "deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "--no_python",
            "--no_local_rank",
            sys.executable,
            str(SCRIPTS / "rank_report.py"),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    ranks = read_ranks(out_dir)
    assert sorted(ranks) == [0, 1]
    for data in ranks.values():
        assert data["executable"] == sys.executable  # the ranks ran in the venv that has torch
        assert data["all_reduce"] == 3.0 and data["dist_world"] == 2
