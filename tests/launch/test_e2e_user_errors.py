"""User mistakes, end to end: each reads as one line (per rank), exits non-zero, and shows no traceback
unless ``DS_DEBUG=1`` asks for it (Note [user errors] in ds_comm.rank_exit, Note [one report per error]
in ds_launch.supervisor).

Every case runs the real ``deepspeed`` launcher (or, for the rank-side port check, the real script
with the launcher's variables) twice: as is, then with the debug switch.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _e2e_util import free_port, run_deepspeed

pytestmark = pytest.mark.faults

TRAIN = """
import argparse, torch, deepspeed
parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int, default=-1)
deepspeed.add_config_arguments(parser)
args = parser.parse_args()
model = torch.nn.Linear(4, 2)
engine, *_ = deepspeed.initialize(args=args, model=model, model_parameters=model.parameters())
for _ in range(2):
    engine.backward(engine(torch.randn(2, 4)).pow(2).mean())
    engine.step()
print("trained", flush=True)
"""
ADAM = {"type": "Adam", "params": {"lr": 1e-3}}
WARMUP = {"type": "WarmupLR", "params": {"warmup_num_steps": 2}}


@dataclass(frozen=True)
class Case:
    """One mistake: the config (None: a good one), extra launcher flags, and the line it must print."""

    name: str
    message: str
    config: dict | None = None
    flags: tuple[str, ...] = ()
    script: str = "train.py"
    hostfile: str | None = None
    hold_port: bool = False
    direct: bool = False  # run the script as rank 0 of 1 without the launcher
    ranks_print: bool = True  # the message comes from the ranks ("[rankN] ..."), not the launcher
    env: dict = field(default_factory=dict)


CASES = [
    Case(
        "betas-one-number",
        "DeepSpeedConfigError: invalid DeepSpeed config: 'optimizer.params.betas': "
        "expected two numbers in [0, 1), like [0.9, 0.999] (got [0.9])",
        config={"train_batch_size": 4, "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "betas": [0.9]}}},
    ),
    Case(
        "lr-not-a-number",
        "DeepSpeedConfigError: invalid DeepSpeed config: 'optimizer.params.lr': "
        "expected a number >= 0 (got 'fast')",
        config={"train_batch_size": 4, "optimizer": {"type": "Adam", "params": {"lr": "fast"}}},
    ),
    Case(
        "negative-lr-with-scheduler",
        "'optimizer.params.lr': expected a number >= 0 (got -1)",
        config={
            "train_batch_size": 4,
            "optimizer": {"type": "AdamW", "params": {"lr": -1}},
            "scheduler": WARMUP,
        },
    ),
    Case(
        "unknown-optimizer",
        "DeepSpeedConfigError: 'optimizer.type': unknown optimizer 'Adamm'; did you mean 'Adam'?",
        config={"train_batch_size": 4, "optimizer": {"type": "Adamm", "params": {"lr": 1e-3}}},
    ),
    Case(
        "batch-not-divisible",
        "DeepSpeedConfigError: gradient_accumulation_steps cannot be derived: "
        "train_batch_size 5 / (micro 2 * world_size 2) does not divide evenly",
        config={"train_batch_size": 5, "train_micro_batch_size_per_gpu": 2, "optimizer": ADAM},
    ),
    Case(
        "bad-hostfile-line",
        "deepspeed: error: hostfile 'hostfile' line 2: slots must be a positive integer, got 'slots=two'",
        hostfile="localhost slots=1\nworker-1 slots=two\n",
        ranks_print=False,
    ),
    Case(
        "bad-include",
        "deepspeed: error: --include: slot 'a' in 'localhost:a' is not a non-negative integer",
        flags=("--include", "localhost:a"),
        ranks_print=False,
    ),
    Case(
        "master-port-in-use",
        "already in use on this machine (master 127.0.0.1); pass a free port with --master_port",
        hold_port=True,
        ranks_print=False,
    ),
    Case(
        "missing-script",
        "deepspeed: error: user script 'missing.py' not found",
        script="missing.py",
        ranks_print=False,
    ),
    Case(
        "rank-side-port-in-use",
        "[rank0] MasterPortInUseError: cannot start the rendezvous on 127.0.0.1:",
        hold_port=True,
        direct=True,
    ),
]


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port something is listening on for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _run(case: Case, tmp_path: Path, env: dict[str, str], port: int) -> subprocess.CompletedProcess:
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "ds.json").write_text(json.dumps(case.config or {"train_batch_size": 4, "optimizer": ADAM}))
    user = [case.script, "--deepspeed", "--deepspeed_config", "ds.json"]
    if case.direct:
        rank_env = dict(
            env, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
        return subprocess.run(
            [sys.executable, *user], env=rank_env, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
    flags = list(case.flags)
    if case.hostfile is not None:
        (tmp_path / "hostfile").write_text(case.hostfile)
        flags += ["--hostfile", "hostfile"]
    elif not flags:
        flags += ["--num_gpus", "2"]
    return run_deepspeed([*flags, "--master_port", str(port), *user], env=env, cwd=tmp_path, timeout=120)


def _check_one_line(case: Case, out: subprocess.CompletedProcess) -> None:
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-3000:]
    assert "trained" not in out.stdout
    assert "Traceback" not in text, text[-3000:]
    hits = [line for line in text.splitlines() if case.message in line]
    assert hits, f"{case.message!r} not in:\n{text[-3000:]}"
    last = out.stderr.strip().splitlines()[-1]
    assert case.message.split(": ", 1)[-1][:40] in last, f"the last line does not name the error: {last!r}"
    if case.ranks_print and not case.direct:
        # One line per rank that got to print (a rank may be stopped first), then the launcher's summary.
        per_rank = [line for line in hits if line.startswith("[rank")]
        assert 1 <= len(per_rank) <= 2 and len(hits) == len(per_rank) + 1, hits
        assert hits[-1].startswith("[deepspeed] rank ") and " exited with code 1: " in hits[-1]
    else:
        assert len(hits) == 1, hits


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_user_error_is_one_line_and_debug_shows_the_traceback(
    case: Case, tmp_path: Path, launch_env, held_port
):
    env = dict(launch_env, OMP_NUM_THREADS="1")
    env.pop("DS_DEBUG", None)
    port = held_port if case.hold_port else free_port()
    _check_one_line(case, _run(case, tmp_path, env, port))

    debug = _run(case, tmp_path, dict(env, DS_DEBUG="1"), held_port if case.hold_port else free_port())
    text = debug.stdout + debug.stderr
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in text, text[-3000:]
    assert case.message.split(": ", 1)[-1][:40] in text
