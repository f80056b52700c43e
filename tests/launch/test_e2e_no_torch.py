"""The launcher never imports torch: not the ``deepspeed`` process, not the per-node launcher, not the
rank shim. (Torch costs about a second to import; the ranks pay it, the launcher must not.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _e2e_util import SCRIPTS, free_port, read_ranks

from ds_launch.resources import encode_world_info

REPORT = str(SCRIPTS / "rank_report.py")


def _imported_top_modules(importtime_stderr: str) -> set[str]:
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.timeout(120)
def test_deepspeed_process_does_not_import_torch(tmp_path, out_dir, launch_env):
    modules = tmp_path / "modules.json"
    cmd = [
        sys.executable,
        str(SCRIPTS / "launch_listing_modules.py"),
        str(modules),
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        REPORT,
    ]
    done = subprocess.run(
        cmd,
        env=dict(launch_env, OUT_DIR=str(out_dir)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(read_ranks(out_dir)) == [0, 1]
    assert json.loads(modules.read_text()) == []


@pytest.mark.timeout(120)
def test_node_launcher_and_rank_shim_do_not_import_torch(tmp_path, out_dir, launch_env):
    env = dict(launch_env, OUT_DIR=str(out_dir))
    node = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "ds_launch.node",
            f"--world_info={encode_world_info({'h': [0]})}",
            "--node_rank=0",
            "--master_addr=127.0.0.1",
            "--master_port=1",
            REPORT,
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert node.returncode == 0, node.stderr
    imported = _imported_top_modules(node.stderr)
    assert "ds_launch" in imported and "torch" not in imported

    shim_env = dict(
        env,
        OMPI_COMM_WORLD_RANK="0",
        OMPI_COMM_WORLD_SIZE="1",
        OMPI_COMM_WORLD_LOCAL_RANK="0",
        OMPI_COMM_WORLD_LOCAL_SIZE="1",
    )
    shim = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "ds_launch.rank_exec",
            "--scheme=openmpi",
            f"--python={sys.executable}",
            REPORT,
        ],
        env=shim_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shim.returncode == 0, shim.stderr
    imported = _imported_top_modules(shim.stderr)
    assert "ds_launch" in imported and "torch" not in imported
