"""User mistakes print one line; ``DS_DEBUG=1`` adds the traceback (the real CLI, in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ds_launch.errors import debug_enabled

CLI = [sys.executable, "-c", "from ds_launch.cli import main; main()"]


@pytest.mark.parametrize(
    ("value", "on"),
    [("", False), ("0", False), ("false", False), ("no", False), ("1", True), ("yes", True), ("true", True)],
)
def test_debug_switch_values(value: str, on: bool):
    assert debug_enabled({"DS_DEBUG": value}) is on
    assert debug_enabled({}) is False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("debug", [False, True])
def test_launch_error_is_one_line_and_debug_adds_the_traceback(tmp_path, debug: bool):
    env = {k: v for k, v in os.environ.items() if k != "DS_DEBUG"}
    if debug:
        env["DS_DEBUG"] = "1"
    out = subprocess.run(
        [*CLI, "--include", "localhost:a", "train.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines[-1].startswith("deepspeed: error: --include: slot 'a' in 'localhost:a'")
    if debug:
        assert lines[0] == "Traceback (most recent call last):" and "LaunchError" in out.stderr
    else:
        assert lines == lines[-1:]


def test_the_debug_switch_reaches_remote_ranks():
    from ds_launch.environment import collect_exports

    assert collect_exports({"DS_DEBUG": "1", "UNRELATED": "x"}) == {"DS_DEBUG": "1"}
