"""The per-node launcher: start this node's ranks directly and supervise them.

On a single node the ``deepspeed`` process itself runs :func:`run_node` (no extra hop). On multi-node
jobs a runner such as pdsh starts ``python -m ds_launch.node --world_info=... --node_rank=N ...`` on
every node. Either way one launcher process per node starts the ranks; the launcher never imports
torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ds_launch.commands import user_command
from ds_launch.cores import cores_for_rank, default_threads_per_rank, resolve_core_list
from ds_launch.elastic import ElasticPolicy, elastic_agent_command, elastic_policy
from ds_launch.errors import LaunchError, report_user_error
from ds_launch.resources import Resources, decode_world_info, global_rank_mapping
from ds_launch.supervisor import ProcessSpec, Supervisor, format_failure


@dataclass(frozen=True, kw_only=True)
class NodeLaunch:
    """Everything one node needs to start its ranks."""

    world_info: Resources
    node_rank: int
    master_addr: str
    master_port: int
    user_script: str
    user_args: tuple[str, ...] = ()
    module: bool = False
    no_python: bool = False
    no_local_rank: bool = False
    rank_log_dir: Path | None = None
    bind_cores_to_rank: bool = False
    bind_core_list: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    elastic: ElasticPolicy | None = None
    python: str = sys.executable

    @property
    def host(self) -> str:
        return list(self.world_info)[self.node_rank]

    @property
    def local_slots(self) -> list[int]:
        return self.world_info[self.host]


def check_node_rank(world_info: Resources, node_rank: int) -> None:
    """``node_rank`` must index a host of the world."""
    if not 0 <= node_rank < len(world_info):
        raise LaunchError(
            f"--node_rank {node_rank} is out of range: the job has {len(world_info)} node(s) "
            f"({', '.join(world_info)}), so it must be in [0, {len(world_info) - 1}]"
        )


def _accelerator() -> tuple[str, str]:
    from ds_accel.probe import detect_accelerator_name, visible_devices_env_name

    name = detect_accelerator_name()
    return name, ("" if name.split(".")[0] == "cpu" else visible_devices_env_name(name))


def node_environment(launch: NodeLaunch, base_env: Mapping[str, str], *, visible_env: str) -> dict[str, str]:
    """The variables shared by every rank of this node (all but RANK and LOCAL_RANK)."""
    env = dict(base_env)
    env.update(launch.extra_env)
    env.update(
        MASTER_ADDR=launch.master_addr,
        MASTER_PORT=str(launch.master_port),
        WORLD_SIZE=str(sum(len(slots) for slots in launch.world_info.values())),
        LOCAL_SIZE=str(len(launch.local_slots)),
        CROSS_RANK=str(launch.node_rank),
        CROSS_SIZE=str(len(launch.world_info)),
    )
    if visible_env:
        # Every local rank sees the node's selected devices and picks its own by LOCAL_RANK.
        env[visible_env] = ",".join(str(slot) for slot in launch.local_slots)
    return env


def build_rank_specs(
    launch: NodeLaunch, *, base_env: Mapping[str, str], visible_env: str = "", log_prefix: str | None = None
) -> list[ProcessSpec]:
    """One :class:`ProcessSpec` per local rank: argv, environment, log file and core affinity."""
    check_node_rank(launch.world_info, launch.node_rank)
    shared = node_environment(launch, base_env, visible_env=visible_env)
    ranks = global_rank_mapping(launch.world_info)[launch.host]
    cores = None
    if launch.bind_cores_to_rank:
        if "KMP_AFFINITY" in shared:
            raise LaunchError(
                "--bind_cores_to_rank: KMP_AFFINITY is set and would override the binding; unset it"
            )
        cores = resolve_core_list(launch.bind_core_list)
    prefix = log_prefix or time.strftime("%Y%m%d%H%M%S")
    specs = []
    for local_rank, rank in enumerate(ranks):
        env = dict(shared, RANK=str(rank), LOCAL_RANK=str(local_rank))
        affinity = None
        if cores is not None:
            affinity = tuple(cores_for_rank(cores, num_local_procs=len(ranks), local_rank=local_rank))
            env["OMP_NUM_THREADS"] = str(len(affinity))
        elif "OMP_NUM_THREADS" not in shared and len(ranks) > 1:  # Note [threads per rank] in ds_launch.cores
            env["OMP_NUM_THREADS"] = str(default_threads_per_rank(len(ranks)))
        argv = user_command(
            python=None if launch.no_python else launch.python,
            module=launch.module,
            script=launch.user_script,
            args=launch.user_args,
            local_rank=None if launch.no_local_rank else local_rank,
        )
        log = launch.rank_log_dir / f"{prefix}_rank{rank}.log" if launch.rank_log_dir else None
        specs.append(
            ProcessSpec(
                name=f"rank {rank} (local rank {local_rank}) on node {launch.host}",
                argv=tuple(argv),
                env=env,
                log_path=log,
                cpu_affinity=affinity,
            )
        )
    return specs


def build_elastic_spec(
    launch: NodeLaunch, *, base_env: Mapping[str, str], visible_env: str = "", log_prefix: str | None = None
) -> ProcessSpec:
    """The torch elastic agent for this node, its workers started through the rank shim."""
    assert launch.elastic is not None
    check_node_rank(launch.world_info, launch.node_rank)
    shim = [launch.python, "-u", "-m", "ds_launch.rank_exec", "--scheme=torchelastic"]
    if not launch.no_python:
        shim.append(f"--python={launch.python}")
    shim += ["--module"] if launch.module else []
    shim += ["--no_local_rank"] if launch.no_local_rank else []
    if launch.bind_cores_to_rank:
        shim.append("--bind_cores_to_rank")
        shim += [f"--bind_core_list={launch.bind_core_list}"] if launch.bind_core_list else []
    if launch.rank_log_dir is not None:
        shim += [
            f"--rank_log_dir={launch.rank_log_dir}",
            f"--log_prefix={log_prefix or time.strftime('%Y%m%d%H%M%S')}",
        ]
    argv = elastic_agent_command(
        policy=launch.elastic,
        nproc_per_node=len(launch.local_slots),
        master_addr=launch.master_addr,
        master_port=launch.master_port,
        worker_argv=[*shim, launch.user_script, *launch.user_args],
        python=launch.python,
    )
    env = node_environment(launch, base_env, visible_env=visible_env)
    return ProcessSpec(name=f"elastic agent on node {launch.host}", argv=tuple(argv), env=env)


def run_node(
    launch: NodeLaunch, *, base_env: Mapping[str, str] | None = None, supervisor: Supervisor | None = None
) -> int:
    """Start this node's ranks, supervise them, report a failure, and return the exit code."""
    base_env = dict(os.environ if base_env is None else base_env)
    _, visible_env = _accelerator()
    if launch.rank_log_dir is not None:
        prepare_log_dir(launch.rank_log_dir)
    prefix = time.strftime("%Y%m%d%H%M%S")
    if launch.elastic is not None:
        specs = [build_elastic_spec(launch, base_env=base_env, visible_env=visible_env, log_prefix=prefix)]
    else:
        specs = build_rank_specs(launch, base_env=base_env, visible_env=visible_env, log_prefix=prefix)
    result = (supervisor or Supervisor()).run(specs)
    if result.failure is not None:
        sys.stderr.write(format_failure(result.failure))
        sys.stderr.flush()
    return result.exit_code


def prepare_log_dir(path: Path) -> None:
    """Create the ``--enable_each_rank_log`` directory, refusing a path that is a file."""
    if path.exists() and not path.is_dir():
        raise LaunchError(f"--enable_each_rank_log {str(path)!r} is a file; expected a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LaunchError(
            f"--enable_each_rank_log {str(path)!r}: cannot create it ({err.strerror})"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ds_launch.node", allow_abbrev=False)
    parser.add_argument("--world_info", required=True)
    parser.add_argument("--node_rank", type=int, required=True)
    parser.add_argument("--master_addr", required=True)
    parser.add_argument("--master_port", type=int, required=True)
    parser.add_argument("--job_id", default="", help="marks this job's node launchers for the stop command")
    for flag in ("--module", "--no_python", "--no_local_rank", "--bind_cores_to_rank", "--elastic_training"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--bind_core_list", default=None)
    parser.add_argument("--enable_each_rank_log", default=None)
    parser.add_argument("--min_elastic_nodes", type=int, default=-1)
    parser.add_argument("--max_elastic_nodes", type=int, default=-1)
    parser.add_argument("user_script")
    parser.add_argument("user_args", nargs=argparse.REMAINDER)
    return parser


def launch_from_argv(argv: list[str]) -> NodeLaunch:
    """Parse the node launcher's command line (as built by the multi-node runners)."""
    opts = _parser().parse_args(argv)
    world_info = decode_world_info(opts.world_info)
    elastic = None
    if opts.elastic_training:
        elastic = elastic_policy(
            min_elastic_nodes=opts.min_elastic_nodes,
            max_elastic_nodes=opts.max_elastic_nodes,
            num_nodes=len(world_info),
        )
    return NodeLaunch(
        world_info=world_info,
        node_rank=opts.node_rank,
        master_addr=opts.master_addr,
        master_port=opts.master_port,
        user_script=opts.user_script,
        user_args=tuple(opts.user_args),
        module=opts.module,
        no_python=opts.no_python,
        no_local_rank=opts.no_local_rank,
        rank_log_dir=Path(opts.enable_each_rank_log) if opts.enable_each_rank_log else None,
        bind_cores_to_rank=opts.bind_cores_to_rank,
        bind_core_list=opts.bind_core_list,
        elastic=elastic,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m ds_launch.node``: the node launcher a multi-node runner starts on each node."""
    try:
        return run_node(launch_from_argv(sys.argv[1:] if argv is None else argv))
    except LaunchError as err:
        report_user_error(err, f"[deepspeed] error: {err}")
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
