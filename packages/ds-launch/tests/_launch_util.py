"""Helpers for ds-launch's tests: rank scripts, the CLI as a real subprocess, survivor checks."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "scripts"
DEEPSPEED = [sys.executable, "-c", "from ds_launch.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Block (no sleeping) until every pid has exited or ``timeout`` passes; return those still alive."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)
    return [pid for pid in pids if pid_alive(pid)]


def make_ready_fifo(out_dir: Path) -> Path:
    fifo = out_dir / "ready.fifo"
    os.mkfifo(fifo)
    return fifo


def read_pids(out_dir: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(out_dir.glob("pid.*"))]


def read_json_lines(directory: Path, pattern: str = "rank*.json") -> dict[int, dict]:
    out = {}
    for path in sorted(directory.glob(pattern)):
        data = json.loads(path.read_text())
        out[int(data["RANK"])] = data
    return out


@pytest.fixture
def launch_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a launcher subprocess: an empty HOME (no stray ~/.deepspeed_env), loopback gloo."""
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), GLOO_SOCKET_IFNAME="lo", PYTHONDONTWRITEBYTECODE="1")
    for key in ("DS_ENV_FILE", "CUDA_VISIBLE_DEVICES", "KMP_AFFINITY"):
        env.pop(key, None)
    return env


def run_deepspeed(
    args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DEEPSPEED, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
