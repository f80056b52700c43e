"""The real ``deepspeed`` command on one node: what every rank sees, and every single-node flag."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _e2e_util import SCRIPTS, free_port, read_ranks, run_deepspeed

REPORT = str(SCRIPTS / "rank_report.py")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ranks", [2, 3])
def test_every_rank_gets_deepspeeds_variables(tmp_path, out_dir, launch_env, ranks):
    port = free_port()
    env = dict(launch_env, OUT_DIR=str(out_dir))
    done = run_deepspeed(
        [
            "--num_gpus",
            str(ranks),
            "--master_port",
            str(port),
            REPORT,
            "--deepspeed",
            "--deepspeed_config",
            "ds_config.json",
        ],
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    seen = read_ranks(out_dir)
    assert sorted(seen) == list(range(ranks))
    for rank, data in seen.items():
        assert {
            k: data[k]
            for k in (
                "RANK",
                "LOCAL_RANK",
                "WORLD_SIZE",
                "LOCAL_SIZE",
                "MASTER_ADDR",
                "MASTER_PORT",
                "CROSS_RANK",
                "CROSS_SIZE",
            )
        } == {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(ranks),
            "LOCAL_SIZE": str(ranks),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "CROSS_RANK": "0",
            "CROSS_SIZE": "1",
        }
        assert data["argv"] == [f"--local_rank={rank}", "--deepspeed", "--deepspeed_config", "ds_config.json"]
        assert data["CUDA_VISIBLE_DEVICES"] is None  # CPU-only machine: no device selection
        assert os.path.realpath(data["executable"]) == os.path.realpath(
            sys.executable
        )  # the same interpreter
    assert sorted(done.stdout.splitlines()) == [f"hello from rank {r}" for r in range(ranks)]
    assert sorted(done.stderr.splitlines()) == [f"stderr of rank {r}" for r in range(ranks)]


@pytest.mark.timeout(120)
def test_ds_is_the_same_command(tmp_path, out_dir, launch_env):
    ds = Path(sys.executable).parent / "ds"
    if not ds.exists():
        pytest.skip("the `ds` console script is not installed in this environment")
    done = subprocess.run(
        [str(ds), "--num_gpus", "2", REPORT],
        env=dict(launch_env, OUT_DIR=str(out_dir)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(read_ranks(out_dir)) == [0, 1]


@pytest.mark.timeout(120)
def test_include_selects_slots_of_localhost(tmp_path, out_dir, launch_env):
    (tmp_path / "hf").write_text("localhost slots=3\n")
    done = run_deepspeed(
        ["-H", "hf", "--include", "localhost:0,2", REPORT],
        env=dict(launch_env, OUT_DIR=str(out_dir)),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    seen = read_ranks(out_dir)
    assert sorted(seen) == [0, 1] and {d["WORLD_SIZE"] for d in seen.values()} == {"2"}


@pytest.mark.timeout(120)
def test_module_no_python_and_no_local_rank(tmp_path, out_dir, launch_env):
    env = dict(launch_env, OUT_DIR=str(out_dir), PYTHONPATH=str(SCRIPTS))
    done = run_deepspeed(["--num_gpus=2", "--module", "rankpkg", "--flag"], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seen = read_ranks(out_dir)
    assert {r: (d["main"], d["argv"]) for r, d in seen.items()} == {
        0: ("rankpkg.__main__", ["--local_rank=0", "--flag"]),
        1: ("rankpkg.__main__", ["--local_rank=1", "--flag"]),
    }

    for path in out_dir.iterdir():
        path.unlink()
    native = str(SCRIPTS / "native.sh")
    done = run_deepspeed(
        ["--num_gpus", "2", "--no_python", "--no_local_rank", native, "a", "b"], env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    seen = read_ranks(out_dir)
    assert {r: (d["argv"], d["shell"]) for r, d in seen.items()} == {0: ("a b", native), 1: ("a b", native)}


@pytest.mark.timeout(120)
def test_deepspeed_env_files_and_ds_env_file(tmp_path, out_dir, launch_env):
    home = Path(launch_env["HOME"])
    (home / ".deepspeed_env").write_text("# from home\nFROM_HOME=yes\nSHARED=home\n")
    (tmp_path / ".deepspeed_env").write_text("FROM_CWD=yes\n\nSHARED=cwd\nNCCL_SOCKET_IFNAME=lo\n")
    env = dict(launch_env, OUT_DIR=str(out_dir))
    done = run_deepspeed(["--num_gpus", "2", REPORT], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for data in read_ranks(out_dir).values():
        assert (data["FROM_HOME"], data["FROM_CWD"], data["SHARED"], data["NCCL_SOCKET_IFNAME"]) == (
            "yes",
            "yes",
            "cwd",
            "lo",
        )

    # DS_ENV_FILE renames the file: the default ones are no longer read.
    (tmp_path / "job_b.env").write_text("CUSTOM=job-b\n")
    for path in out_dir.iterdir():
        path.unlink()
    done = run_deepspeed(["--num_gpus", "2", REPORT], env=dict(env, DS_ENV_FILE="job_b.env"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for data in read_ranks(out_dir).values():
        assert (data["CUSTOM"], data["FROM_HOME"], data["FROM_CWD"]) == ("job-b", None, None)


@pytest.mark.timeout(120)
def test_save_pid_and_per_rank_logs(tmp_path, out_dir, launch_env):
    script = tmp_path / "pidcheck.py"
    # The rank reads the pid file while the launcher runs: it must name the launcher (its parent).
    script.write_text(
        "import json, os, pathlib, sys\n"
        "ppid = os.getppid()\n"
        "pid_file = pathlib.Path(f'/tmp/{ppid}.ds')\n"
        "print('rank', os.environ['RANK'], 'out'); print('rank', os.environ['RANK'], 'err', file=sys.stderr)\n"
        "pathlib.Path(os.environ['OUT_DIR'], f\"rank{os.environ['RANK']}.json\").write_text(json.dumps("
        "{'RANK': os.environ['RANK'], 'ppid': ppid, 'pid_file': pid_file.read_text().strip()}))\n"
    )
    logs = tmp_path / "logs"
    done = run_deepspeed(
        ["--num_gpus", "2", "--save_pid", "--enable_each_rank_log", str(logs), str(script)],
        env=dict(launch_env, OUT_DIR=str(out_dir)),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    seen = read_ranks(out_dir)
    launcher_pid = seen[0]["ppid"]
    assert all(d["pid_file"] == str(launcher_pid) for d in seen.values())
    assert not Path(f"/tmp/{launcher_pid}.ds").exists()  # removed on exit
    for rank in (0, 1):
        (log,) = logs.glob(f"*_rank{rank}.log")
        assert sorted(log.read_text().splitlines()) == [f"rank {rank} err", f"rank {rank} out"]
    assert done.stdout == ""  # everything went to the per-rank logs


@pytest.mark.timeout(120)
def test_core_binding_is_read_back_inside_each_rank(tmp_path, out_dir, launch_env):
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs at least 2 cores")
    env = dict(launch_env, OUT_DIR=str(out_dir))
    done = run_deepspeed(["--num_gpus", "2", "--bind_cores_to_rank", REPORT], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seen = read_ranks(out_dir)
    share = len(cores) // 2
    for rank in (0, 1):
        assert seen[rank]["affinity"] == cores[share * rank : share * (rank + 1)]
        assert seen[rank]["OMP_NUM_THREADS"] == str(share)

    for path in out_dir.iterdir():
        path.unlink()
    done = run_deepspeed(
        ["--num_gpus", "1", "--bind_cores_to_rank", "--bind_core_list", str(cores[-1]), REPORT],
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (
        read_ranks(out_dir)[0]["affinity"] == [cores[-1]] and read_ranks(out_dir)[0]["OMP_NUM_THREADS"] == "1"
    )
