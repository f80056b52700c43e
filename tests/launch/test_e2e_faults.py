"""Faults, end to end: a crashing rank, a hanging rank tree, signals to the launcher, a failing node.

Each test ends with the right exit code and no surviving process: the ranks (and their children)
record their pids, and the test waits on each with a bounded pidfd wait. Ranks report readiness
through a FIFO, so nothing sleeps.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from _e2e_util import (
    SCRIPTS,
    free_port,
    have,
    make_ready_fifo,
    recorded_pids,
    run_deepspeed,
    start_deepspeed,
    wait_gone,
    wait_ready,
)

pytestmark = pytest.mark.faults

FAULT = str(SCRIPTS / "fault.py")


def fault_env(launch_env, out_dir, mode: str, crash_rank: int = -1) -> dict[str, str]:
    make_ready_fifo(out_dir)
    return dict(launch_env, OUT_DIR=str(out_dir), FAULT=mode, CRASH_RANK=str(crash_rank))


@pytest.mark.timeout(120)
def test_crashing_rank_ends_the_job_with_its_code_and_output(tmp_path, out_dir, launch_env):
    env = fault_env(launch_env, out_dir, "crash", crash_rank=1)
    done = run_deepspeed(
        ["--num_gpus", "3", "--master_port", str(free_port()), FAULT], env=env, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 3
    report = done.stderr.splitlines()
    # The rank's own lines were relayed once; the closing report names who, the code and the error line.
    assert "rank 1 is failing on purpose" in done.stdout.splitlines()
    assert report.count("Traceback (simulated): ValueError: boom") == 1
    assert report[-1] == (
        "[deepspeed] rank 1 (local rank 1) on node localhost exited with code 3: "
        "Traceback (simulated): ValueError: boom"
    )
    pids = recorded_pids(out_dir)
    assert len(pids) == 2 and wait_gone(pids) == []


@pytest.mark.timeout(120)
def test_hanging_rank_tree_is_killed_when_another_crashes(tmp_path, out_dir, launch_env):
    """Rank 0 ignores SIGTERM and has a child that does too: the whole tree must still go."""
    env = fault_env(launch_env, out_dir, "hang", crash_rank=1)
    done = run_deepspeed(["--num_gpus", "2", FAULT], env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 3
    assert "rank 1 (local rank 1) on node localhost exited with code 3" in done.stderr
    pids = recorded_pids(out_dir)
    assert len(pids) == 2  # rank 0 and its child
    assert wait_gone(pids) == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_to_the_launcher_ends_every_rank(tmp_path, out_dir, launch_env, signum, code):
    env = fault_env(launch_env, out_dir, "wait")
    launcher = start_deepspeed(["--num_gpus", "2", "--save_pid", FAULT], env=env, cwd=tmp_path)
    try:
        wait_ready(out_dir / "ready.fifo", 2)
        pid_file = Path(f"/tmp/{launcher.pid}.ds")
        assert pid_file.read_text().strip() == str(launcher.pid)
        launcher.send_signal(signum)
        launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == code
    assert wait_gone(recorded_pids(out_dir)) == []
    assert not pid_file.exists()  # --save_pid's file is removed on this exit path too


@pytest.mark.timeout(120)
def test_ranks_die_with_a_killed_launcher(tmp_path, out_dir, launch_env):
    """SIGKILL cannot be handled: the ranks' parent-death signal still ends them."""
    env = fault_env(launch_env, out_dir, "wait")
    launcher = start_deepspeed(["--num_gpus", "2", FAULT], env=env, cwd=tmp_path)
    try:
        wait_ready(out_dir / "ready.fifo", 2)
        launcher.kill()
        launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert wait_gone(recorded_pids(out_dir)) == []


@pytest.mark.timeout(120)
@pytest.mark.skipif(not have("pdsh"), reason="needs pdsh")
def test_failing_node_stops_the_other_nodes(tmp_path, out_dir, launch_env):
    """A rank on the second host crashes; the first host's rank waits forever and must be stopped."""
    (tmp_path / "hostfile").write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    env = fault_env(launch_env, out_dir, "crash", crash_rank=1)
    done = run_deepspeed(
        ["-H", "hostfile", "--launcher_args", "-R exec", "--master_addr", "127.0.0.1", FAULT],
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 3
    assert "127.0.0.1: [deepspeed] rank 1 (local rank 0) on node 127.0.0.1 exited with code 3" in done.stderr
    assert "[deepspeed] node 127.0.0.1 exited with code 3" in done.stderr
    pids = recorded_pids(out_dir)
    assert len(pids) == 1 and wait_gone(pids) == []


@pytest.mark.timeout(120)
@pytest.mark.skipif(not have("pdsh"), reason="needs pdsh")
def test_sigterm_to_a_pdsh_launch_stops_every_node(tmp_path, out_dir, launch_env):
    (tmp_path / "hostfile").write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    env = fault_env(launch_env, out_dir, "wait")
    launcher = start_deepspeed(
        ["-H", "hostfile", "--launcher_args", "-R exec", "--master_addr", "127.0.0.1", FAULT],
        env=env,
        cwd=tmp_path,
    )
    try:
        wait_ready(out_dir / "ready.fifo", 2)
        launcher.terminate()
        launcher.communicate(timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 143
    pids = recorded_pids(out_dir)
    assert len(pids) == 2 and wait_gone(pids) == []
