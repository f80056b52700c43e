"""The ``deepspeed`` command line: DeepSpeed's flags and forms, and a table of bad inputs.

Every bad input must give exactly one line on stderr naming the offending text, exit code 2, no
traceback, and start nothing.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from _launch_util import DEEPSPEED

from ds_launch.cli import _invoke, parse_args, run

NCORES = len(os.sched_getaffinity(0))
HF2 = {"hf": "worker-0 slots=2\nworker-1 slots=2\n"}


def test_flags_defaults_and_pass_through():
    o = parse_args(["train.py", "--deepspeed", "--deepspeed_config", "ds.json", "--local_rank=3", "-H", "x"])
    assert (o.hostfile, o.master_port, o.launcher, o.num_gpus, o.num_nodes, o.node_rank) == (
        "/job/hostfile",
        29500,
        "pdsh",
        -1,
        -1,
        -1,
    )
    assert (o.enable_each_rank_log, o.autotuning, o.bind_core_list, o.ssh_port, o.master_addr) == (
        None,
        "",
        None,
        None,
        "",
    )
    assert o.user_script == "train.py"
    assert o.user_args == ("--deepspeed", "--deepspeed_config", "ds.json", "--local_rank=3", "-H", "x")


def test_every_flag_in_both_forms():
    argv = [
        "-H",
        "hf",
        "-i",
        "a:0",
        "--num_nodes=2",
        "--min_elastic_nodes",
        "1",
        "--max_elastic_nodes=3",
        "--num_accelerators",
        "4",
        "--master_port=1234",
        "--master_addr",
        "10.0.0.1",
        "--node_rank=1",
        "--launcher=OpenMPI",
        "--launcher_args",
        "-x FOO",
        "--module",
        "--no_local_rank",
        "--no_ssh",
        "--no_ssh_check",
        "--force_multi",
        "--save_pid",
        "--enable_each_rank_log=/logs",
        "--autotuning",
        "run",
        "--elastic_training",
        "--bind_cores_to_rank",
        "--bind_core_list=0-1",
        "--ssh_port",
        "2222",
        "-q",
        "m.train",
    ]
    o = parse_args(argv)
    assert (o.hostfile, o.include, o.num_nodes, o.min_elastic_nodes, o.max_elastic_nodes, o.num_gpus) == (
        "hf",
        "a:0",
        2,
        1,
        3,
        4,
    )
    assert (o.master_port, o.master_addr, o.node_rank, o.launcher, o.launcher_args) == (
        1234,
        "10.0.0.1",
        1,
        "OpenMPI",
        "-x FOO",
    )
    assert o.module and o.no_local_rank and o.no_ssh and o.no_ssh_check and o.force_multi and o.save_pid
    assert (o.enable_each_rank_log, o.autotuning, o.bind_core_list, o.ssh_port) == (
        "/logs",
        "run",
        "0-1",
        2222,
    )
    assert o.elastic_training and o.bind_cores_to_rank and o.quiet and o.log_level == "error"
    assert parse_args(["--num_gpus", "2", "-e", "b", "--no_python", "./x"]).exclude == "b"
    assert parse_args(["--enable_each_rank_log", "None", "x.py"]).enable_each_rank_log is None


BAD_INPUTS = [
    # (id, files, argv, env, expected text in the one-line error)
    (
        "hostfile-bad-line",
        {"hf": "worker-0 slots=2\nworker-1 gpus=2\n"},
        ["-H", "hf"],
        {},
        "hostfile 'hf' line 2: unknown key 'gpus'",
    ),
    (
        "hostfile-no-slots",
        {"hf": "worker-0\n"},
        ["-H", "hf"],
        {},
        "line 1: expected 'HOST slots=N', got 'worker-0'",
    ),
    (
        "hostfile-zero-slots",
        {"hf": "w slots=0\n"},
        ["-H", "hf"],
        {},
        "slots must be a positive integer, got 'slots=0'",
    ),
    (
        "hostfile-duplicate",
        {"hf": "w slots=1\nv slots=1\nw slots=2\n"},
        ["-H", "hf"],
        {},
        "line 3: host 'w' is listed twice (first on line 1)",
    ),
    ("hostfile-bad-host", {"hf": "w;reboot slots=1\n"}, ["-H", "hf"], {}, "bad host name 'w;reboot'"),
    ("hostfile-empty", {"hf": "# nothing\n\n"}, ["-H", "hf"], {}, "hostfile 'hf' lists no hosts"),
    ("hostfile-missing", {}, ["-H", "nope"], {}, "--hostfile 'nope': no such file"),
    (
        "include-unknown-host",
        HF2,
        ["-H", "hf", "-i", "worker-9"],
        {},
        "--include: host 'worker-9' is not in the resource pool",
    ),
    (
        "include-unknown-slot",
        HF2,
        ["-H", "hf", "-i", "worker-1:0,5"],
        {},
        "--include: host 'worker-1' has no slot 5 (slots: 0,1)",
    ),
    (
        "exclude-unknown-slot",
        HF2,
        ["-H", "hf", "-e", "worker-0:7"],
        {},
        "--exclude: host 'worker-0' has no slot 7",
    ),
    (
        "include-bad-slot",
        HF2,
        ["-H", "hf", "-i", "worker-0:x"],
        {},
        "slot 'x' in 'worker-0:x' is not a non-negative integer",
    ),
    (
        "include-empty-spec",
        HF2,
        ["-H", "hf", "-i", "worker-0@@worker-1"],
        {},
        "--include: empty NODE_SPEC in 'worker-0@@worker-1'",
    ),
    (
        "include-and-exclude",
        HF2,
        ["-H", "hf", "-i", "worker-0", "-e", "worker-1"],
        {},
        "--include and --exclude are mutually exclusive",
    ),
    (
        "num-gpus-with-include",
        HF2,
        ["-H", "hf", "-i", "worker-0", "--num_gpus", "1"],
        {},
        "--num_nodes/--num_gpus cannot be combined with --include/--exclude",
    ),
    (
        "num-nodes-too-many",
        HF2,
        ["-H", "hf", "--num_nodes", "3"],
        {},
        "--num_nodes 3 but only 2 host(s) are available",
    ),
    ("num-nodes-no-hostfile", {}, ["--num_nodes", "2"], {}, "--num_nodes 2 needs a hostfile"),
    ("num-gpus-zero", {}, ["--num_gpus", "0"], {}, "--num_gpus 0: expected a positive count (or -1 for all)"),
    (
        "num-gpus-over-slots",
        HF2,
        ["-H", "hf", "--num_gpus", "3"],
        {},
        "--num_gpus 3 exceeds slots=2 of host 'worker-0'",
    ),
    ("num-gpus-not-int", {}, ["--num_gpus", "two"], {}, "Invalid value for '--num_gpus'"),
    (
        "bind-core-list-syntax",
        {},
        ["--bind_cores_to_rank", "--bind_core_list", "1,a"],
        {},
        "--bind_core_list '1,a': 'a' is not a core number or a range like 3-5",
    ),
    (
        "bind-core-list-reversed",
        {},
        ["--bind_core_list", "3-1"],
        {},
        "--bind_core_list '3-1': range '3-1' ends before it starts",
    ),
    (
        "bind-core-list-overlap",
        {},
        ["--bind_core_list=0-2,1"],
        {},
        "'1' overlaps or is not in ascending order",
    ),
    (
        "bind-core-unavailable",
        {},
        ["--bind_cores_to_rank", "--bind_core_list", "4096"],
        {},
        "core 4096 is not available here",
    ),
    (
        "bind-too-few-cores",
        {},
        ["--bind_cores_to_rank", "--num_gpus", str(NCORES + 1)],
        {},
        f"cannot give each of {NCORES + 1} ranks",
    ),
    ("bind-kmp-affinity", {}, ["--bind_cores_to_rank"], {"KMP_AFFINITY": "compact"}, "KMP_AFFINITY is set"),
    (
        "env-file-bad-line",
        {".deepspeed_env": "A=1\nJUST_A_NAME\n"},
        [],
        {},
        ".deepspeed_env line 2: expected VAR=VALUE, got 'JUST_A_NAME'",
    ),
    (
        "env-file-bad-name",
        {".deepspeed_env": "BAD-NAME=1\n"},
        [],
        {},
        "line 1: 'BAD-NAME' is not a valid variable name",
    ),
    ("ds-env-file-missing", {}, [], {"DS_ENV_FILE": "job.env"}, "DS_ENV_FILE='job.env': no such file in"),
    (
        "ds-env-file-bad-line",
        {"job.env": "export\n"},
        [],
        {"DS_ENV_FILE": "job.env"},
        "job.env line 1: expected VAR=VALUE, got 'export'",
    ),
    (
        "launcher-unknown",
        {},
        ["--launcher", "torque"],
        {},
        "--launcher 'torque' is unknown; expected one of pdsh, openmpi",
    ),
    (
        "launcher-args-quote",
        HF2,
        ["-H", "hf", "--launcher_args", "-R 'exec"],
        {},
        '--launcher_args "-R \'exec": No closing quotation',
    ),
    (
        "mpich-with-include",
        HF2,
        ["-H", "hf", "--launcher", "mpich", "-i", "worker-0@worker-1"],
        {},
        "--launcher mpich does not support --include/--exclude",
    ),
    (
        "impi-uneven-slots",
        {"hf": "a slots=2\nb slots=1\n"},
        ["-H", "hf", "--launcher", "impi"],
        {},
        "--launcher impi needs the same slot count on every host",
    ),
    (
        "slurm-comma-value",
        {**HF2, ".deepspeed_env": "LIST=a,b\n"},
        ["-H", "hf", "--launcher", "slurm"],
        {},
        "--launcher slurm cannot export LIST: its value contains ','",
    ),
    (
        "module-and-no-python",
        {},
        ["--module", "--no_python"],
        {},
        "--module and --no_python cannot be used together",
    ),
    (
        "autotuning-no-config",
        {},
        ["--autotuning", "tune"],
        {},
        "--autotuning needs the DeepSpeed config among the script's arguments",
    ),
    (
        "autotuning-bad-mode",
        {},
        ["--autotuning", "fast"],
        {},
        "--autotuning 'fast': expected one of tune, run",
    ),
    ("no-ssh-without-node-rank", HF2, ["-H", "hf", "--no_ssh"], {}, "--no_ssh needs --node_rank N"),
    (
        "no-ssh-node-rank-range",
        HF2,
        ["-H", "hf", "--no_ssh", "--node_rank", "2", "--master_addr", "127.0.0.1"],
        {},
        "--node_rank 2 is out of range: the job has 2 node(s)",
    ),
    (
        "master-port-range",
        {},
        ["--master_port", "70000"],
        {},
        "--master_port 70000: expected a port in [1, 65535]",
    ),
    ("ssh-port-range", {}, ["--ssh_port", "0"], {}, "--ssh_port 0: expected a port in [1, 65535]"),
    (
        "elastic-range",
        {},
        ["--elastic_training", "--min_elastic_nodes", "3", "--max_elastic_nodes", "2"],
        {},
        "--min_elastic_nodes 3 is larger than --max_elastic_nodes 2",
    ),
    (
        "rank-log-is-a-file",
        {"logs": ""},
        ["--enable_each_rank_log", "logs"],
        {},
        "--enable_each_rank_log 'logs' is a file; expected a directory",
    ),
    ("unknown-flag", {}, ["--num_gpu", "2"], {}, "no such option: --num_gpu"),
    ("log-level", {}, ["--log_level", "loud"], {}, "--log_level 'loud': expected one of debug"),
]


@pytest.mark.parametrize(
    ("files", "argv", "env", "expected"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, files, argv, env, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for key in ("DS_ENV_FILE", "KMP_AFFINITY", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "t.py").write_text("raise SystemExit('the user script must not run')\n")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    before = set(tmp_path.iterdir())
    code = _invoke([*argv, "t.py"], run)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("deepspeed: error: ") and err.count("\n") == 1, err
    assert expected in err
    assert set(tmp_path.iterdir()) == before  # nothing written


def test_missing_script():
    assert _invoke([], run) == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "argv", [["-H", "hf", "t.py"], ["--bogus", "t.py"], ["--num_gpus", "2", "missing.py"]]
)
def test_console_script_errors_have_no_traceback(tmp_path, argv):
    (tmp_path / "hf").write_text("broken line\n")
    done = subprocess.run(
        [*DEEPSPEED, *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, HOME=str(tmp_path)),
    )
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("deepspeed: error: ")


@pytest.mark.timeout(60)
def test_help_lists_every_seed_flag():
    done = subprocess.run([*DEEPSPEED, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    for flag in (
        "--hostfile",
        "--include",
        "--exclude",
        "--num_nodes",
        "--min_elastic_nodes",
        "--max_elastic_nodes",
        "--num_gpus",
        "--num_accelerators",
        "--master_port",
        "--master_addr",
        "--node_rank",
        "--launcher",
        "--launcher_args",
        "--module",
        "--no_python",
        "--no_local_rank",
        "--no_ssh",
        "--no_ssh_check",
        "--force_multi",
        "--save_pid",
        "--enable_each_rank_log",
        "--autotuning",
        "--elastic_training",
        "--bind_cores_to_rank",
        "--bind_core_list",
        "--ssh_port",
    ):
        assert flag in done.stdout, flag
