"""--elastic_training end to end: torch's elastic agent with a c10d rendezvous starts the ranks; the
ranks still get DeepSpeed's variables and join one gloo world; the launcher process stays torch-free."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _e2e_util import SCRIPTS, free_port, read_ranks


@pytest.mark.timeout(180)
def test_elastic_single_node(tmp_path, out_dir, launch_env):
    modules = tmp_path / "modules.json"
    cmd = [
        sys.executable,
        str(SCRIPTS / "launch_listing_modules.py"),
        str(modules),
        "--elastic_training",
        "--min_elastic_nodes=1",
        "--max_elastic_nodes=1",
        "--num_gpus",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(SCRIPTS / "rank_report.py"),
        "--lr",
        "0.1",
    ]
    env = dict(launch_env, OUT_DIR=str(out_dir), ALLREDUCE="1", ELASTIC_RUN_ID="e2e-elastic")
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    seen = read_ranks(out_dir)
    assert sorted(seen) == [0, 1]
    for rank, data in seen.items():
        assert data["TORCHELASTIC_RUN_ID"] == "e2e-elastic"  # started by torch's elastic agent
        assert (
            data["LOCAL_RANK"],
            data["WORLD_SIZE"],
            data["LOCAL_SIZE"],
            data["CROSS_RANK"],
            data["CROSS_SIZE"],
        ) == (str(rank), "2", "2", "0", "1")
        assert data["argv"] == [f"--local_rank={rank}", "--lr", "0.1"]
        assert (data["dist_world"], data["all_reduce"]) == (2, 3.0)
    assert json.loads(modules.read_text()) == []  # torch was imported by the agent, not the launcher
