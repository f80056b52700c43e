"""Resolving resources (hostfile, local devices, visible devices, limits) and the pid file."""

from __future__ import annotations

import os

import pytest
from _launch_util import SCRIPTS, read_json_lines

import ds_accel.probe
from ds_launch import driver
from ds_launch.errors import LaunchError
from ds_launch.options import LaunchOptions


@pytest.fixture
def fake_cuda_node(monkeypatch):
    """This machine has no GPU: pretend the torch-free probe found 4 CUDA devices."""
    monkeypatch.setattr(ds_accel.probe, "detect_accelerator_name", lambda: "cuda")
    monkeypatch.setattr(ds_accel.probe, "local_device_count", lambda name=None: 4)
    monkeypatch.setattr(ds_accel.probe, "visible_devices_env_name", lambda name=None: "CUDA_VISIBLE_DEVICES")


@pytest.fixture
def no_hostfile(monkeypatch):
    """Treat a path that does not exist as the default /job/hostfile (absent: use local devices)."""
    monkeypatch.setattr(driver.LaunchOptions, "hostfile_is_default", property(lambda self: True))


def opts(**kwargs) -> LaunchOptions:
    kwargs.setdefault("hostfile", "/job/hostfile-that-does-not-exist")
    kwargs.setdefault("user_script", "t.py")
    return LaunchOptions(**kwargs)


def test_visible_devices_become_include(fake_cuda_node, no_hostfile):
    env = {"CUDA_VISIBLE_DEVICES": "1,3"}
    resolved, options = driver.resolve_resources(opts(), env)
    assert resolved.active_resources == {"localhost": [1, 3]} and options.include == "localhost:1,3"
    assert "CUDA_VISIBLE_DEVICES" not in env  # set again per node from the selected slots


def test_visible_devices_are_ignored_when_a_filter_is_given(fake_cuda_node, no_hostfile):
    resolved, _ = driver.resolve_resources(opts(num_gpus=2), {"CUDA_VISIBLE_DEVICES": "3"})
    assert resolved.active_resources == {"localhost": [0, 1]}
    with pytest.raises(
        LaunchError, match="CUDA_VISIBLE_DEVICES='GPU-1a2b': expected comma-separated device indices"
    ):
        driver.resolve_resources(opts(), {"CUDA_VISIBLE_DEVICES": "GPU-1a2b"})
    with pytest.raises(
        LaunchError, match="CUDA_VISIBLE_DEVICES='5' names device 5, but this machine has 4 cuda"
    ):
        driver.resolve_resources(opts(), {"CUDA_VISIBLE_DEVICES": "5"})
    with pytest.raises(LaunchError, match="--num_gpus 8 exceeds the 4 cuda device"):
        driver.resolve_resources(opts(num_gpus=8), {})


def test_cpu_num_gpus_starts_that_many_ranks(monkeypatch, no_hostfile):
    monkeypatch.setattr(ds_accel.probe, "detect_accelerator_name", lambda: "cpu")
    resolved, _ = driver.resolve_resources(opts(num_gpus=3), {})
    assert resolved.active_resources == {"localhost": [0, 1, 2]} and not resolved.from_hostfile


def test_hostfile_limits(tmp_path):
    hostfile = tmp_path / "hf"
    hostfile.write_text("a slots=2\nb slots=2\nc slots=1\n")
    resolved, _ = driver.resolve_resources(opts(hostfile=str(hostfile), num_nodes=2), {})
    assert resolved.active_resources == {"a": [0, 1], "b": [0, 1]} and resolved.from_hostfile
    with pytest.raises(LaunchError, match="--num_gpus 2 exceeds slots=1 of host 'c'"):
        driver.resolve_resources(opts(hostfile=str(hostfile), num_gpus=2), {})
    with pytest.raises(LaunchError, match="--num_nodes 4 but only 3 host"):
        driver.resolve_resources(opts(hostfile=str(hostfile), num_nodes=4), {})
    with pytest.raises(LaunchError, match="no slots are left"):
        driver.resolve_resources(opts(hostfile=str(hostfile), exclude="a@b@c"), {})


def test_pid_file_is_removed_on_every_exit(tmp_path, monkeypatch):
    monkeypatch.setattr(driver, "PID_FILE_BASEPATH", str(tmp_path))
    with driver.pid_file(True) as path:
        assert path == tmp_path / f"{os.getpid()}.ds" and path.read_text().strip() == str(os.getpid())
    assert not path.exists()
    with pytest.raises(RuntimeError), driver.pid_file(True) as path:
        raise RuntimeError("boom")
    assert not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.timeout(60)
def test_ranks_see_the_selected_devices(fake_cuda_node, no_hostfile, monkeypatch, tmp_path):
    """A real launch, on a pretend 4-GPU node, with CUDA_VISIBLE_DEVICES=1,3."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OUT_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    code = driver.launch(opts(user_script=str(SCRIPTS / "envdump.py")))
    assert code == 0
    ranks = read_json_lines(tmp_path)
    assert sorted(ranks) == [0, 1]
    assert {d["CUDA_VISIBLE_DEVICES"] for d in ranks.values()} == {"1,3"}
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1,3"  # the launcher's own environment is untouched
