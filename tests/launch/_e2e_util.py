"""Helpers for the launcher's end-to-end tests: run the real ``deepspeed`` console script, read what
ranks recorded, and check that no process survives (blocking waits with bounds; nothing sleeps)."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).parent / "scripts"
_CONSOLE = Path(sys.executable).parent / "deepspeed"
DEEPSPEED = (
    [str(_CONSOLE)] if _CONSOLE.exists() else [sys.executable, "-c", "from ds_launch.cli import main; main()"]
)
MPI_ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_deepspeed(
    args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 90
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*DEEPSPEED, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def start_deepspeed(args: list[str], *, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*DEEPSPEED, *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def read_ranks(out_dir: Path) -> dict[int, dict]:
    return {
        int(data["RANK"]): data for data in (json.loads(p.read_text()) for p in out_dir.glob("rank*.json"))
    }


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """Block on each pid's pidfd until it exits or the deadline passes; return the pids still alive."""
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


def wait_ready(fifo: Path, count: int, timeout: float = 60.0) -> None:
    """Read one byte per ready rank from the FIFO (blocking select, bounded)."""
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    deadline = time.monotonic() + timeout
    got = 0
    try:
        while got < count:
            readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                raise AssertionError(f"only {got} of {count} ranks became ready within {timeout}s")
            got += len(os.read(fd, count))
    finally:
        os.close(fd)


def recorded_pids(out_dir: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(out_dir.glob("pid.*"))]


def have(binary: str) -> bool:
    return shutil.which(binary) is not None
