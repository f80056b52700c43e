"""Fixtures for the launcher's end-to-end tests (helpers live in _e2e_util.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from netns_hosts import netns_cluster  # noqa: F401 - the namespace-hosts fixture, for test_e2e_netns.py


@pytest.fixture
def launch_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment for a launcher run: an empty HOME (no stray ~/.deepspeed_env), loopback gloo."""
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), GLOO_SOCKET_IFNAME="lo", PYTHONDONTWRITEBYTECODE="1")
    for key in ("DS_ENV_FILE", "CUDA_VISIBLE_DEVICES", "KMP_AFFINITY", "OMP_NUM_THREADS"):
        env.pop(key, None)
    return env


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out
