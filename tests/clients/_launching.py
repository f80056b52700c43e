"""How the client tests start real ranks: the launch commands users type, a hermetic environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).parent / "scripts"
BIN = Path(sys.executable).parent
LAUNCH_TIMEOUT_S = 240


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Run:
    """One finished launch: its output folder and every rank's result file."""

    out: Path
    results: list[dict[str, Any]]
    log: str


def run_checked(cmd: list[str], home: Path) -> str:
    """Run ``cmd`` in ``home`` with :func:`env_for`; fail the test with the log tail on a non-zero exit."""
    proc = subprocess.run(
        cmd, env=env_for(home), cwd=home, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited with {proc.returncode}:\n{log[-6000:]}"
    return log


def env_for(home: Path) -> dict[str, str]:
    """This environment, made hermetic: loopback gloo, one thread per rank, offline Hugging Face, ``home``."""
    env = dict(os.environ)
    env.update(
        {
            "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "WANDB_DISABLED": "true",
            "HOME": str(
                home
            ),  # no ~/.deepspeed_env, no user accelerate config, caches stay in the test's folder
            "HF_HOME": str(home / "hf"),
        }
    )
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def command(launcher: str, script: str) -> list[str]:
    """The command that starts ``scripts/<script>`` on 2 ranks with ``launcher`` (deepspeed or accelerate)."""
    port = str(free_port())
    if launcher == "deepspeed":
        return [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", port, str(SCRIPTS / script)]
    if launcher == "accelerate":
        return [
            str(BIN / "accelerate"),
            "launch",
            "--use_deepspeed",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            port,
            str(SCRIPTS / script),
        ]
    raise ValueError(f"unknown launcher {launcher!r}")
