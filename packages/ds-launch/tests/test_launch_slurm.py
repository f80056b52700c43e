"""Command construction for srun (slurm is not installed on this machine)."""

from __future__ import annotations

import pytest
from _launch_jobs import job, shim

from ds_launch.errors import LaunchError
from ds_launch.runners import get_runner


def test_srun_command():
    cmd = get_runner("slurm")(job(launcher_args="--partition=gpu")).get_cmd()
    assert cmd == [
        "srun",
        "-n",
        "4",
        "--partition=gpu",
        "--export=ALL,NCCL_DEBUG=INFO,MASTER_ADDR=10.0.0.1,MASTER_PORT=29500",
        *shim("slurm"),
    ]


def test_srun_with_filters_and_limits():
    include = get_runner("slurm")(job(include="worker-1", resources={"worker-1": [0, 1]})).get_cmd()
    assert include[:7] == ["srun", "-n", "2", "--nodelist", "worker-1", "--nodes", "1"]
    limited = get_runner("slurm")(job(num_nodes=2, num_gpus=2)).get_cmd()
    assert limited[:7] == ["srun", "-n", "4", "--nodes", "2", "--gpus-per-node", "2"]


@pytest.mark.parametrize(
    ("resources", "exports", "message"),
    [
        ({"a": [1], "b": [0]}, {}, "cannot select device ids [1] on a"),
        ({"a": [0, 1], "b": [0]}, {}, "same slot count on every host"),
        ({"a": [0]}, {"X": "1,2"}, "cannot export X: its value contains ','"),
    ],
)
def test_srun_refuses_what_it_cannot_express(resources, exports, message):
    with pytest.raises(LaunchError) as err:
        get_runner("slurm")(job(resources=resources, exports=exports)).validate()
    assert message in str(err.value)
