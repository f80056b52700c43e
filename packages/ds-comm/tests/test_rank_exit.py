"""How a rank dies of an uncaught exception (Notes [failing exit] and [user errors] in ds_comm.rank_exit),
in real processes with a real gloo group."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from ds_comm import rank_exit
from ds_comm.testing import free_port

pytestmark = pytest.mark.faults

PRELUDE = """
import atexit, sys, ds_comm
class Mistake(ValueError):
    ds_user_error = True
class Finalised:
    def __del__(self):
        print("finalised", flush=True)
keep = Finalised()  # its __del__ runs only if the interpreter finalises
atexit.register(lambda: print("atexit ran", flush=True))
"""


def _run(
    body: str, *, debug: bool = False, port: int | None = None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "DS_DEBUG")
    }
    env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", **(extra_env or {}))
    if debug:
        env["DS_DEBUG"] = "1"
    code = PRELUDE + body.replace("PORT", str(port or free_port()))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=100)


def test_user_error_marker_and_one_line(monkeypatch):
    class Mistake(ValueError):
        ds_user_error = True

    assert rank_exit.is_user_error(Mistake("x")) and not rank_exit.is_user_error(ValueError("x"))
    monkeypatch.setenv("RANK", "3")
    assert rank_exit.one_line(Mistake("'lr': bad\n  value")) == "[rank3] Mistake: 'lr': bad value"
    monkeypatch.delenv("RANK")
    assert rank_exit.one_line(KeyError()) == "KeyError"
    assert rank_exit.debug_enabled({"DS_DEBUG": "1"}) and not rank_exit.debug_enabled({"DS_DEBUG": "0"})


@pytest.mark.timeout(120)
def test_user_error_with_a_group_is_one_line_and_exits_1_without_finalising():
    out = _run(
        "ds_comm.init_distributed(distributed_port=PORT)\nraise Mistake(\"'optimizer.params.lr': bad\")"
    )
    assert out.returncode == 1, out.stderr
    assert out.stderr == "[rank0] Mistake: 'optimizer.params.lr': bad\n"
    # Note [failing exit]: atexit callbacks run, interpreter finalisation (where gloo threads abort) does not.
    assert out.stdout == "atexit ran\n"


@pytest.mark.timeout(120)
def test_debug_switch_prints_the_traceback_of_a_user_error():
    out = _run("ds_comm.init_distributed(distributed_port=PORT)\nraise Mistake('bad')", debug=True)
    assert out.returncode == 1
    assert "[rank0]: Traceback (most recent call last):" in out.stderr
    assert out.stderr.rstrip().endswith("[rank0]: Mistake: bad")


@pytest.mark.timeout(120)
def test_a_bug_keeps_its_traceback_once_and_exits_1():
    out = _run("ds_comm.init_distributed(distributed_port=PORT)\n{}['missing']")
    assert out.returncode == 1
    assert out.stderr.count("Traceback (most recent call last):") == 1
    assert out.stderr.rstrip().endswith("[rank0]: KeyError: 'missing'")
    assert out.stdout == "atexit ran\n"


@pytest.mark.timeout(120)
def test_keyboard_interrupt_ends_as_python_ends_it():
    out = _run("ds_comm.init_distributed(distributed_port=PORT)\nraise KeyboardInterrupt")
    assert out.returncode == -2, out.stderr  # killed by SIGINT, exit status 130 in a shell
    assert "KeyboardInterrupt" in out.stderr and out.stdout == "atexit ran\n"


@pytest.mark.timeout(120)
def test_without_a_group_python_exits_normally():
    out = _run(
        "from ds_comm.rank_exit import install_exit_hook\ninstall_exit_hook()\nraise Mistake('no group yet')"
    )
    assert out.returncode == 1
    assert out.stderr == "Mistake: no group yet\n"
    assert out.stdout.splitlines() == ["atexit ran", "finalised"]


@pytest.mark.timeout(120)
def test_master_port_in_use_is_one_line_naming_the_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        launcher_env = {
            "RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_RANK": "0",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        out = _run(
            "from ds_comm.rank_exit import install_exit_hook\ninstall_exit_hook()\nds_comm.init_distributed()",
            extra_env=launcher_env,
        )
    assert out.returncode == 1
    assert out.stderr == (
        f"[rank0] MasterPortInUseError: cannot start the rendezvous on 127.0.0.1:{port}: the port is "
        "already in use (another job?); pass a free port with --master_port (launcher) or MASTER_PORT\n"
    )
