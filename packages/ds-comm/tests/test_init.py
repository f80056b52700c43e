"""init_distributed in real processes: plain script, an existing group, dist_init_required=False."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch.distributed as dist

import ds_comm
from ds_comm.testing import free_port, run_distributed


def _reinit_is_noop():
    before = dist.group.WORLD
    ds_comm.init_distributed(dist_backend="nccl")  # would fail on CPU if it tried to re-initialise
    return dist.group.WORLD is before, ds_comm.get_world_size()


@pytest.mark.timeout(120)
def test_existing_group_is_respected():
    assert run_distributed(_reinit_is_noop, world_size=2) == [(True, 2), (True, 2)]


def _clean_env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("OMPI_", "PMI_"))}


@pytest.mark.timeout(120)
def test_plain_script_forms_a_single_process_world():
    code = (
        "import ds_comm, torch.distributed as dist\n"
        "ds_comm.init_distributed()\n"
        "env = ds_comm.last_discovery()\n"
        "print(dist.get_world_size(), dist.get_backend(), env.launcher, env.sources['master_port'])\n"
    )
    env = {**_clean_env(), "GLOO_SOCKET_IFNAME": "lo"}
    port = free_port()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code.replace("init_distributed()", f"init_distributed(distributed_port={port})"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=100,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "gloo", "single-process", "distributed_port", "argument"]


@pytest.mark.timeout(60)
def test_dist_init_required_false_skips():
    code = "import ds_comm, torch.distributed as dist\nds_comm.init_distributed(dist_init_required=False)\nprint(dist.is_initialized())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(), timeout=50
    )
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.timeout(60)
def test_incomplete_environment_fails_before_any_rendezvous():
    code = "import ds_comm\nds_comm.init_distributed()"
    env = {**_clean_env(), "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=50)
    assert out.returncode != 0
    assert "incomplete torchrun/launcher environment: LOCAL_RANK missing" in out.stderr
