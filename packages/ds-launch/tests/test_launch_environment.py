"""Exported variables and .deepspeed_env files (with DS_ENV_FILE)."""

from __future__ import annotations

import pytest

from ds_launch.environment import collect_exports, env_file_paths, load_deepspeed_env, parse_env_lines
from ds_launch.errors import LaunchError


def test_collect_exports_by_prefix_and_accelerator():
    env = {"NCCL_IB_DISABLE": "1", "PYTHONPATH": "/x", "HOME": "/root", "ASCEND_HOME": "/a", "UCX_TLS": "tcp"}
    assert collect_exports(env, accelerator="cpu") == {
        "NCCL_IB_DISABLE": "1",
        "PYTHONPATH": "/x",
        "UCX_TLS": "tcp",
    }
    assert "ASCEND_HOME" in collect_exports(env, accelerator="npu")


def test_per_node_variables_are_not_exported_on_aisc():
    env = {"AISC_JOB_NAME": "j", "NCCL_IB_HCA": "mlx5", "NCCL_DEBUG": "INFO"}
    assert collect_exports(env) == {"NCCL_DEBUG": "INFO"}


def test_parse_env_lines():
    lines = [
        "# comment",
        "",
        "NCCL_IB_DISABLE=1",
        "export NCCL_SOCKET_IFNAME=eth0",
        'QUOTED="a b"',
        "EMPTY=",
        "EQ=a=b",
    ]
    assert parse_env_lines(lines, source="f") == {
        "NCCL_IB_DISABLE": "1",
        "NCCL_SOCKET_IFNAME": "eth0",
        "QUOTED": "a b",
        "EMPTY": "",
        "EQ": "a=b",
    }


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("JUSTTEXT", "f line 2: expected VAR=VALUE, got 'JUSTTEXT'"),
        ("1BAD=x", "f line 2: '1BAD' is not a valid variable name"),
        ("A-B=x", "'A-B' is not a valid variable name"),
        ("=x", "'' is not a valid variable name"),
    ],
)
def test_malformed_env_lines(line, message):
    with pytest.raises(LaunchError) as err:
        parse_env_lines(["OK=1", line], source="f")
    assert message in str(err.value)


def test_home_then_cwd_and_cwd_wins(tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    (home / ".deepspeed_env").write_text("SHARED=home\nFROM_HOME=1\n")
    (cwd / ".deepspeed_env").write_text("SHARED=cwd\nFROM_CWD=1\n")
    assert load_deepspeed_env(env={}, home=home, cwd=cwd) == {
        "SHARED": "cwd",
        "FROM_HOME": "1",
        "FROM_CWD": "1",
    }
    # the same directory is read once
    assert env_file_paths(env={}, home=cwd, cwd=cwd) == [cwd / ".deepspeed_env"]


def test_ds_env_file_renames_or_points_at_a_file(tmp_path):
    (tmp_path / ".job_a_env").write_text("CUSTOM=a\n")
    assert load_deepspeed_env(env={"DS_ENV_FILE": ".job_a_env"}, home=tmp_path / "h", cwd=tmp_path) == {
        "CUSTOM": "a"
    }
    absolute = tmp_path / "elsewhere.env"
    absolute.write_text("CUSTOM=abs\n")
    assert load_deepspeed_env(env={"DS_ENV_FILE": str(absolute)}, home=tmp_path, cwd=tmp_path) == {
        "CUSTOM": "abs"
    }
    with pytest.raises(LaunchError, match="DS_ENV_FILE='missing.env': no such file"):
        load_deepspeed_env(env={"DS_ENV_FILE": "missing.env"}, home=tmp_path, cwd=tmp_path)


def test_no_file_is_fine_without_ds_env_file(tmp_path):
    assert load_deepspeed_env(env={}, home=tmp_path, cwd=tmp_path) == {}
