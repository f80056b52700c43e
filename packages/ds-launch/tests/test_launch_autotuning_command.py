"""Experiment commands: inherited launcher flags, arg_mappings, ports; and outcome classification."""

from __future__ import annotations

from pathlib import Path

import pytest

from ds_launch.autotuning.command import LaunchCommand, apply_arg_mappings, find_key, launcher_flags
from ds_launch.autotuning.runner import FAILED, NO_METRICS, OK, OOM, classify
from ds_launch.autotuning.settings import ConfigArgument
from ds_launch.cli import parse_args
from ds_launch.options import LaunchOptions


def test_inherited_flags_parse_back_to_the_same_options():
    argv = [
        "--hostfile",
        "/h",
        "--include",
        "worker-0:0,1",
        "--launcher",
        "openmpi",
        "--launcher_args",
        "-x A",
        "--no_local_rank",
        "--master_addr",
        "10.0.0.1",
        "--bind_cores_to_rank",
        "--bind_core_list",
        "0-3",
        "--ssh_port",
        "2222",
        "--log_level",
        "debug",
        "--module",
        "--save_pid",
        "--enable_each_rank_log",
        "/l",
        "--autotuning",
        "run",
        "--master_port",
        "1234",
        "pkg.train",
        "--lr",
        "1",
    ]
    options = parse_args(argv)
    flags = launcher_flags(options)
    assert "--autotuning" not in flags and "--save_pid" not in flags and "--master_port" not in flags
    assert "--enable_each_rank_log" not in flags
    again = parse_args([*flags, "pkg.train", "--lr", "1"])
    for name in (
        "hostfile",
        "include",
        "launcher",
        "launcher_args",
        "no_local_rank",
        "master_addr",
        "module",
        "bind_cores_to_rank",
        "bind_core_list",
        "ssh_port",
        "log_level",
        "user_script",
        "user_args",
    ):
        assert getattr(again, name) == getattr(options, name), name
    assert launcher_flags(LaunchOptions(num_gpus=2)) == ["--num_gpus", "2"]


def test_arg_mappings():
    config = {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": "auto",
        "zero_optimization": {"stage": 2},
    }
    assert find_key(config, "stage") == 2 and find_key(config, "nothing") is None
    args = ["--bs", "1", "--x=1"]
    mappings = {
        "train_micro_batch_size_per_gpu": "--bs",
        "stage": "--x",
        "gradient_accumulation_steps": "--gas",
    }
    assert apply_arg_mappings(args, mappings, config) == ["--bs", "8", "--x=2"]  # "auto" is not passed on
    assert apply_arg_mappings([], {"train_micro_batch_size_per_gpu": "--bs"}, config) == ["--bs", "8"]


def test_command_parts():
    command = LaunchCommand(
        ("--num_gpus", "2"),
        65535,
        "train.py",
        ("--deepspeed_config", "ds.json"),
        ConfigArgument(1, "", Path("ds.json")),
        {"train_micro_batch_size_per_gpu": "--bs"},
    )
    assert command.port(0) == 1024 and command.port(3) == 1027  # wraps past 65535
    args = command.deepspeed_args("/r/ds_config.json", {"train_micro_batch_size_per_gpu": 4}, 2000)
    assert args == [
        "--num_gpus",
        "2",
        "--master_port",
        "2000",
        "train.py",
        "--deepspeed_config",
        "/r/ds_config.json",
        "--bs",
        "4",
    ]
    assert LaunchCommand.display(["a b", "c"]) == "deepspeed 'a b' c"


@pytest.mark.parametrize(
    ("code", "produced", "lines", "status", "error"),
    [
        (0, True, [], OK, None),
        (0, False, [], NO_METRICS, "the job ended before the engine measured anything"),
        (
            1,
            False,
            [
                "Traceback (most recent call last):",
                '  File "t.py"',
                "ValueError: bad shape",
                "[deepspeed] rank 1 exited with code 1",
            ],
            FAILED,
            "exit code 1: ValueError: bad shape",
        ),
        (
            1,
            False,
            ["[deepspeed]   | torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB"],
            OOM,
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB",
        ),
        (1, False, ["[deepspeed]   | [rank1]: KeyError: 'x'"], FAILED, "exit code 1: KeyError: 'x'"),
        (
            1,
            False,
            [
                "[rank0]: ValueError: bad",
                "[deepspeed] rank 0 (local rank 0) on node localhost exited with code 1: ValueError: bad",
            ],
            FAILED,
            "exit code 1: ValueError: bad",
        ),
        (
            137,
            False,
            ["nothing useful"],
            OOM,
            "killed by SIGKILL (usually the out-of-memory killer); nothing useful",
        ),
        (3, False, [], FAILED, "exit code 3: exit code 3"),
    ],
)
def test_classify(code, produced, lines, status, error):
    got_status, got_error = classify(code, produced, lines)
    assert got_status == status
    assert (got_error is None) if error is None else error in got_error
