"""``deepspeed.launcher.runner``: DeepSpeed's module path, names and behaviour, as aliases of ds_launch."""

from __future__ import annotations

import pytest


def test_runner_names_and_helpers():
    from deepspeed.launcher import runner

    assert runner.DEEPSPEED_ENVIRONMENT_NAME == ".deepspeed_env"
    assert runner.DLTS_HOSTFILE == "/job/hostfile"
    assert set(runner.LAUNCHER_CLASSES) == {"pdsh", "openmpi", "mvapich", "slurm", "mpich", "impi"}
    assert runner._parse_hostfile(["worker-0 slots=4", "worker-1 slots=2"]) == {"worker-0": 4, "worker-1": 2}
    with pytest.raises(ValueError, match="listed twice"):
        runner._parse_hostfile(["w slots=1", "w slots=1"])
    active = runner.parse_inclusion_exclusion({"worker-0": 4, "worker-1": 2}, "", "worker-0:1")
    assert active == {"worker-0": [0, 2, 3], "worker-1": [0, 1]}
    args = runner.parse_args(["--num_gpus", "2", "train.py", "--deepspeed"])
    assert (args.num_gpus, args.user_script, list(args.user_args)) == (2, "train.py", ["--deepspeed"])
    from ds_launch.cli import main

    assert runner.main is main
