"""The per-node launcher: what each local rank is given, and the node launcher as its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _launch_util import SCRIPTS, read_json_lines

from ds_launch.errors import LaunchError
from ds_launch.node import NodeLaunch, build_rank_specs, launch_from_argv, prepare_log_dir
from ds_launch.resources import encode_world_info

WORLD = {"node-a": [0, 1], "node-b": [2, 3, 5]}


def launch(**kwargs) -> NodeLaunch:
    base = dict(
        world_info=WORLD,
        node_rank=1,
        master_addr="10.1.1.1",
        master_port=1234,
        user_script="t.py",
        user_args=("--deepspeed",),
        python="/py",
    )
    return NodeLaunch(**{**base, **kwargs})


def test_rank_specs_carry_every_variable():
    specs = build_rank_specs(launch(extra_env={"FROM_FILE": "1"}), base_env={"PATH": "/bin"}, log_prefix="p")
    assert [s.name for s in specs] == [
        f"rank {r} (local rank {lr}) on node node-b" for lr, r in enumerate((2, 3, 4))
    ]
    for local_rank, s in enumerate(specs):
        assert s.argv == ("/py", "-u", "t.py", f"--local_rank={local_rank}", "--deepspeed")
        assert {
            k: s.env[k]
            for k in (
                "RANK",
                "LOCAL_RANK",
                "WORLD_SIZE",
                "LOCAL_SIZE",
                "MASTER_ADDR",
                "MASTER_PORT",
                "CROSS_RANK",
                "CROSS_SIZE",
                "FROM_FILE",
                "PATH",
            )
        } == {
            "RANK": str(2 + local_rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": "5",
            "LOCAL_SIZE": "3",
            "MASTER_ADDR": "10.1.1.1",
            "MASTER_PORT": "1234",
            "CROSS_RANK": "1",
            "CROSS_SIZE": "2",
            "FROM_FILE": "1",
            "PATH": "/bin",
        }
        assert "CUDA_VISIBLE_DEVICES" not in s.env and s.log_path is None and s.cpu_affinity is None
        assert s.env["OMP_NUM_THREADS"] == str(max(1, len(os.sched_getaffinity(0)) // 3))


def test_visible_devices_are_the_nodes_selected_slots():
    # No GPU here: the variable's name is what the probe would return on a CUDA node.
    specs = build_rank_specs(launch(), base_env={}, visible_env="CUDA_VISIBLE_DEVICES")
    assert {s.env["CUDA_VISIBLE_DEVICES"] for s in specs} == {"2,3,5"}


def test_logs_affinity_and_flags():
    cores = sorted(os.sched_getaffinity(0))
    specs = build_rank_specs(
        launch(
            world_info={"n": [0]},
            node_rank=0,
            rank_log_dir=Path("/logs"),
            bind_cores_to_rank=True,
            module=True,
            no_local_rank=True,
        ),
        base_env={},
        log_prefix="20250101",
    )
    assert specs[0].log_path == Path("/logs/20250101_rank0.log")
    assert specs[0].cpu_affinity == tuple(cores) and specs[0].env["OMP_NUM_THREADS"] == str(len(cores))
    assert specs[0].argv == ("/py", "-u", "-m", "t.py", "--deepspeed")


def test_ranks_share_the_cores_unless_the_user_set_threads():
    # Note [threads per rank]: 3 local ranks each get an equal share of this process's cores, at least 1.
    share = max(1, len(os.sched_getaffinity(0)) // 3)
    assert {s.env["OMP_NUM_THREADS"] for s in build_rank_specs(launch(), base_env={})} == {str(share)}
    chosen = build_rank_specs(launch(), base_env={"OMP_NUM_THREADS": "7"})
    assert {s.env["OMP_NUM_THREADS"] for s in chosen} == {"7"}
    alone = build_rank_specs(launch(world_info={"n": [0]}, node_rank=0), base_env={})
    assert "OMP_NUM_THREADS" not in alone[0].env  # one rank: torch's own default already fits


def test_bad_node_rank_and_log_dir(tmp_path):
    with pytest.raises(LaunchError, match=r"--node_rank 2 is out of range: the job has 2 node\(s\)"):
        build_rank_specs(launch(node_rank=2), base_env={})
    (tmp_path / "file").write_text("")
    with pytest.raises(LaunchError, match="is a file; expected a directory"):
        prepare_log_dir(tmp_path / "file")


def test_node_command_line_round_trip():
    parsed = launch_from_argv(
        [
            f"--world_info={encode_world_info(WORLD)}",
            "--node_rank=0",
            "--master_addr=h",
            "--master_port=7",
            "--job_id=abc",
            "--no_python",
            "run.sh",
            "--node_rank=9",
            "x",
        ]
    )
    assert parsed.world_info == WORLD and parsed.node_rank == 0 and parsed.no_python
    assert parsed.user_script == "run.sh" and parsed.user_args == ("--node_rank=9", "x")


@pytest.mark.timeout(60)
def test_node_launcher_process_starts_its_ranks(tmp_path):
    """``python -m ds_launch.node`` as pdsh would start it on the second of two nodes."""
    env = dict(os.environ, OUT_DIR=str(tmp_path))
    cmd = [
        sys.executable,
        "-m",
        "ds_launch.node",
        f"--world_info={encode_world_info({'a': [0], 'b': [0, 1]})}",
        "--node_rank=1",
        "--master_addr=127.0.0.1",
        "--master_port=1",
        "--job_id=t",
        str(SCRIPTS / "envdump.py"),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    ranks = read_json_lines(tmp_path)
    assert sorted(ranks) == [1, 2]
    assert {(d["LOCAL_RANK"], d["CROSS_RANK"], d["WORLD_SIZE"]) for d in ranks.values()} == {
        ("0", "1", "3"),
        ("1", "1", "3"),
    }
