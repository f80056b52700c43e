"""pdsh: command construction, quoting, and real runs through ``pdsh -R exec`` on this machine."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

import pytest
from _launch_jobs import job
from _launch_util import SCRIPTS, free_port, read_json_lines, run_deepspeed

from ds_launch.resources import decode_world_info
from ds_launch.runners import get_runner
from ds_launch.runners.pdsh import SSH_LIVENESS_ARGS


def test_command_over_ssh():
    runner = get_runner("pdsh")(job(ssh_port=2022))
    cmd = runner.get_cmd()
    assert cmd[:6] == ["pdsh", "-S", "-f", "1024", "-w", "worker-0,worker-1"] and len(cmd) == 7
    script = cmd[6]
    assert script.startswith(
        "export NCCL_DEBUG=INFO; cd '/work dir' && exec /venv/bin/python -u -m ds_launch.node "
    )
    words = shlex.split(script.split("&& exec ", 1)[1])
    assert words[4].startswith("--world_info=")
    assert decode_world_info(words[4].split("=", 1)[1]) == {"worker-0": [0, 1], "worker-1": [0, 1]}
    assert words[5:] == [
        "--node_rank=%n",
        "--master_addr=10.0.0.1",
        "--master_port=29500",
        "--job_id=J1",
        "train.py",
        "--deepspeed",
        "--deepspeed_config",
        "ds.json",
    ]
    env = runner.get_env({"PATH": "/bin"})
    assert env["PDSH_RCMD_TYPE"] == "ssh"
    assert env["PDSH_SSH_ARGS_APPEND"] == f"{SSH_LIVENESS_ARGS} -p 2022"


def test_ssh_keep_alive_is_added_and_the_users_own_options_win():
    """Note [lost host]: the keep-alives make ssh notice a vanished host; a user's value comes first."""
    env = get_runner("pdsh")(job()).get_env({"PDSH_SSH_ARGS_APPEND": "-o ServerAliveInterval=30"})
    words = env["PDSH_SSH_ARGS_APPEND"].split()
    assert words[:2] == ["-o", "ServerAliveInterval=30"]
    assert "ServerAliveCountMax=3" in words and "ConnectTimeout=10" in words and "-p" not in words


def test_exec_mode_runs_the_script_under_sh_and_forwards_flags():
    runner = get_runner("pdsh")(
        job(
            launcher_args="-R exec",
            module=True,
            no_local_rank=True,
            bind_cores_to_rank=True,
            bind_core_list="0-3",
            enable_each_rank_log="/logs",
            elastic_training=True,
            venv_script="/venv/bin/activate",
        )
    )
    cmd = runner.get_cmd()
    assert cmd[6:10] == ["-R", "exec", "sh", "-c"]
    script = cmd[10]
    assert ". /venv/bin/activate;" in script
    for flag in (
        "--module",
        "--no_local_rank",
        "--bind_cores_to_rank",
        "--bind_core_list=0-3",
        "--enable_each_rank_log=/logs",
        "--elastic_training",
        "--min_elastic_nodes=-1",
    ):
        assert f" {flag} " in script


def test_values_are_quoted_and_percent_signs_escaped(tmp_path):
    marker = tmp_path / "pwned"
    evil = {"CUSTOM": f"$(touch {marker}); `touch {marker}` 'q' \"dq\" 100% %n"}
    script = get_runner("pdsh")(job(exports=evil)).node_script()
    assert script.count("%n") == 2  # the node-rank placeholder, and the value's own escaped as %%n
    exports = script.split(" cd ", 1)[0].replace("%%", "%")  # what the remote shell gets from pdsh
    shown = subprocess.run(
        ["sh", "-c", exports + ' printf %s "$CUSTOM"'], capture_output=True, text=True, check=True
    )
    assert shown.stdout == evil["CUSTOM"]
    assert not marker.exists()


def test_kill_command_and_failure_probe():
    runner = get_runner("pdsh")(job(launcher_args="-R exec"))
    assert runner.kill_cmd()[-3:] == ["sh", "-c", "pkill -TERM -f '[-]-job_id=J1'; true"]
    assert runner.failure_probe("pdsh@vm: worker-1: sh exited with exit code 3") == ("worker-1", 3)
    assert runner.failure_probe("pdsh@vm: worker-1: ssh exited with exit code 255") == ("worker-1", 255)
    assert runner.failure_probe("worker-1: hello") is None
    assert runner.remote_cmd("worker-1", ["hostname", "-I"]) == [
        "pdsh",
        "-S",
        "-w",
        "worker-1",
        "-R",
        "exec",
        "sh",
        "-c",
        "hostname -I",
    ]


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("pdsh") is None, reason="needs pdsh")
def test_real_pdsh_exec_run_passes_hostile_values_literally(tmp_path, launch_env):
    """Two host names that resolve here; exports and arguments full of shell syntax arrive verbatim."""
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "hf").write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}); `touch {marker}` 'q' \"dq\" 100% %n %h"
    (tmp_path / ".deepspeed_env").write_text(f"CUSTOM={hostile}\n")
    args = [f"; touch {marker}", "a b", "%n", "$HOME", "it's"]
    env = dict(launch_env, OUT_DIR=str(out), NCCL_DEBUG="WARN")
    done = run_deepspeed(
        [
            "-H",
            "hf",
            "--launcher_args",
            "-R exec",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(SCRIPTS / "envdump.py"),
            *args,
        ],
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    ranks = read_json_lines(out)
    assert sorted(ranks) == [0, 1]
    for rank, data in ranks.items():
        assert data["argv"] == ["--local_rank=0", *args]
        assert data["CUSTOM"] == hostile
        assert data["NCCL_DEBUG"] == "WARN"  # NCCL* is exported by default
        assert (data["CROSS_RANK"], data["CROSS_SIZE"], data["WORLD_SIZE"]) == (str(rank), "2", "2")
        assert data["cwd"] == str(tmp_path)
    assert not marker.exists()
    assert "localhost: hello from rank 0" in done.stdout and "127.0.0.1: hello from rank 1" in done.stdout
    json.dumps(ranks)  # plain data
