"""Jobs for runner command-construction tests (plain values, no processes)."""

from __future__ import annotations

from ds_launch.options import LaunchOptions
from ds_launch.runners import MultiNodeJob

PY = "/venv/bin/python"


def job(*, resources=None, exports=None, **options) -> MultiNodeJob:
    resources = resources or {"worker-0": [0, 1], "worker-1": [0, 1]}
    opts = LaunchOptions(
        user_script="train.py",
        user_args=("--deepspeed", "--deepspeed_config", "ds.json"),
        hostfile="/job/hf",
        **options,
    )
    return MultiNodeJob(
        options=opts,
        active_resources=resources,
        resource_pool={h: len(s) for h, s in resources.items()},
        master_addr="10.0.0.1",
        exports=exports if exports is not None else {"NCCL_DEBUG": "INFO"},
        job_id="J1",
        cwd="/work dir",
        python=PY,
    )


def shim(scheme: str, *extra: str) -> list[str]:
    return [
        PY,
        "-u",
        "-m",
        "ds_launch.rank_exec",
        f"--scheme={scheme}",
        f"--python={PY}",
        *extra,
        "train.py",
        "--deepspeed",
        "--deepspeed_config",
        "ds.json",
    ]
