"""The per-rank command line."""

from __future__ import annotations

import pytest

from ds_launch.commands import user_command
from ds_launch.errors import LaunchError


def test_python_script_gets_local_rank_right_after_the_script():
    argv = user_command(
        python="/py",
        module=False,
        script="train.py",
        args=["--deepspeed", "--deepspeed_config", "c.json"],
        local_rank=1,
    )
    assert argv == ["/py", "-u", "train.py", "--local_rank=1", "--deepspeed", "--deepspeed_config", "c.json"]


def test_module_no_python_and_no_local_rank():
    assert user_command(python="/py", module=True, script="pkg.train", args=[], local_rank=0) == [
        "/py",
        "-u",
        "-m",
        "pkg.train",
        "--local_rank=0",
    ]
    assert user_command(python=None, module=False, script="./run.sh", args=["x"], local_rank=None) == [
        "./run.sh",
        "x",
    ]
    with pytest.raises(LaunchError, match="--module and --no_python"):
        user_command(python=None, module=True, script="m", args=[], local_rank=0)
