"""``--elastic_training``: hand the node's ranks to torch.distributed.elastic.

The node launcher runs ``python -m torch.distributed.run`` (torch's elastic agent) with a c10d
rendezvous at ``MASTER_ADDR:MASTER_PORT``. Torch is imported by that child only: the launcher process
stays torch-free. Each worker is started through :mod:`ds_launch.rank_exec`, which turns the agent's
variables into DeepSpeed's (LOCAL_SIZE, CROSS_RANK, CROSS_SIZE, ``--local_rank``) before exec'ing the
user's command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from ds_launch.errors import LaunchError

ELASTIC_TRAINING_ID_DEFAULT = "123456789"
ELASTIC_RUN_ID_ENV = "ELASTIC_RUN_ID"


@dataclass(frozen=True)
class ElasticPolicy:
    """How many nodes may form the job, and the rendezvous it meets at."""

    min_nodes: int
    max_nodes: int
    run_id: str = ELASTIC_TRAINING_ID_DEFAULT
    max_restarts: int = 100


def elastic_policy(*, min_elastic_nodes: int, max_elastic_nodes: int, num_nodes: int) -> ElasticPolicy:
    """Resolve DeepSpeed's defaults (min 1, max = the job's node count) and check the range."""
    low = 1 if min_elastic_nodes == -1 else min_elastic_nodes
    high = num_nodes if max_elastic_nodes == -1 else max_elastic_nodes
    if low < 1 or high < 1:
        raise LaunchError(f"--min_elastic_nodes/--max_elastic_nodes must be positive, got {low} and {high}")
    if low > high:
        raise LaunchError(f"--min_elastic_nodes {low} is larger than --max_elastic_nodes {high}")
    run_id = os.environ.get(ELASTIC_RUN_ID_ENV) or ELASTIC_TRAINING_ID_DEFAULT
    return ElasticPolicy(min_nodes=low, max_nodes=high, run_id=run_id)


def elastic_agent_command(
    *,
    policy: ElasticPolicy,
    nproc_per_node: int,
    master_addr: str,
    master_port: int,
    worker_argv: Sequence[str],
    python: str = sys.executable,
) -> list[str]:
    """``python -m torch.distributed.run`` with a c10d rendezvous running ``worker_argv`` per rank."""
    return [
        python,
        "-u",
        "-m",
        "torch.distributed.run",
        f"--nnodes={policy.min_nodes}:{policy.max_nodes}",
        f"--nproc-per-node={nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={master_addr}:{master_port}",
        f"--rdzv-id={policy.run_id}",
        f"--max-restarts={policy.max_restarts}",
        "--no-python",
        *worker_argv,
    ]
