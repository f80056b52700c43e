"""--elastic_training: node-count policy and the torch elastic agent's command (real runs: tests/launch)."""

from __future__ import annotations

import pytest

from ds_launch.elastic import ElasticPolicy, elastic_agent_command, elastic_policy
from ds_launch.errors import LaunchError
from ds_launch.node import NodeLaunch, build_elastic_spec


def test_defaults_follow_deepspeed(monkeypatch):
    monkeypatch.delenv("ELASTIC_RUN_ID", raising=False)
    assert elastic_policy(min_elastic_nodes=-1, max_elastic_nodes=-1, num_nodes=3) == ElasticPolicy(
        1, 3, "123456789"
    )
    monkeypatch.setenv("ELASTIC_RUN_ID", "job-7")
    assert elastic_policy(min_elastic_nodes=2, max_elastic_nodes=4, num_nodes=1).run_id == "job-7"


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [(3, 2, "--min_elastic_nodes 3 is larger than --max_elastic_nodes 2"), (0, 2, "must be positive")],
)
def test_bad_ranges(low, high, message):
    with pytest.raises(LaunchError, match=message):
        elastic_policy(min_elastic_nodes=low, max_elastic_nodes=high, num_nodes=2)


def test_agent_command_uses_c10d_rendezvous():
    cmd = elastic_agent_command(
        policy=ElasticPolicy(1, 2, "r"),
        nproc_per_node=4,
        master_addr="10.0.0.1",
        master_port=29500,
        worker_argv=["w", "x"],
        python="/py",
    )
    assert cmd == [
        "/py",
        "-u",
        "-m",
        "torch.distributed.run",
        "--nnodes=1:2",
        "--nproc-per-node=4",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=10.0.0.1:29500",
        "--rdzv-id=r",
        "--max-restarts=100",
        "--no-python",
        "w",
        "x",
    ]


def test_node_spec_runs_workers_through_the_rank_shim():
    launch = NodeLaunch(
        world_info={"n": [0, 1]},
        node_rank=0,
        master_addr="h",
        master_port=5,
        user_script="t.py",
        user_args=("--a",),
        elastic=ElasticPolicy(1, 1),
        python="/py",
        no_local_rank=True,
    )
    spec = build_elastic_spec(launch, base_env={})
    tail = list(spec.argv[spec.argv.index("--no-python") + 1 :])
    assert tail == [
        "/py",
        "-u",
        "-m",
        "ds_launch.rank_exec",
        "--scheme=torchelastic",
        "--python=/py",
        "--no_local_rank",
        "t.py",
        "--a",
    ]
    assert spec.name == "elastic agent on node n" and spec.env["LOCAL_SIZE"] == "2"
