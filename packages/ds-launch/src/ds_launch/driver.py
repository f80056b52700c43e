"""From options to running ranks: resolve resources, then launch on this node or through a runner.

The order follows DeepSpeed's runner: hostfile (or the local devices), the visible-devices variable,
``--include``/``--exclude``, ``--num_nodes``/``--num_gpus``; then either this process becomes the node
launcher (one node, or ``--no_ssh``) or a multi-node runner starts a node launcher on every host.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ds_accel.atomic_files import atomic_write_text
from ds_launch.elastic import elastic_policy
from ds_launch.environment import collect_exports, load_deepspeed_env
from ds_launch.errors import LaunchError
from ds_launch.hostfile import fetch_hostfile
from ds_launch.node import NodeLaunch, check_node_rank, run_node
from ds_launch.options import LaunchOptions, validate_options
from ds_launch.ports import check_master_port
from ds_launch.resources import Resources, apply_num_nodes_and_gpus, parse_inclusion_exclusion
from ds_launch.supervisor import ProcessSpec, Supervisor, format_failure

logger = logging.getLogger("ds_launch")
PID_FILE_BASEPATH = "/tmp"
LOCAL_HOSTS = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class ResolvedResources:
    """The pool the job draws from and the slots it uses, host by host."""

    resource_pool: dict[str, int]
    active_resources: Resources
    from_hostfile: bool


def _visible_devices(visible_env: str, env: dict[str, str]) -> list[int]:
    """Take the visible-devices variable out of ``env`` and parse it (empty: not set)."""
    visible = env.pop(visible_env, "") if visible_env else ""
    if not visible:
        return []
    if not all(item.strip().isdigit() for item in visible.split(",")):
        raise LaunchError(f"{visible_env}={visible!r}: expected comma-separated device indices like 0,1")
    return [int(item) for item in visible.split(",")]


def _physical_device_count(accelerator: str, visible_env: str) -> int:
    """All devices of the node: the selection is applied through --include instead."""
    from ds_accel.probe import local_device_count

    saved = os.environ.pop(visible_env, None) if visible_env else None
    try:
        return local_device_count(accelerator)
    finally:
        if saved is not None:
            os.environ[visible_env] = saved


def _local_pool(options: LaunchOptions, env: dict[str, str]) -> tuple[dict[str, int], LaunchOptions]:
    """No hostfile: this machine's devices, with the visible-devices variable turned into --include."""
    from ds_accel.probe import detect_accelerator_name, visible_devices_env_name

    accelerator = detect_accelerator_name()
    is_cpu = accelerator.split(".")[0] == "cpu"
    visible_env = "" if is_cpu else visible_devices_env_name(accelerator)
    visible = _visible_devices(visible_env, env)
    count = _physical_device_count(accelerator, visible_env)
    if count < 1:
        raise LaunchError(f"no {accelerator} devices found on this machine")
    if visible and (options.include or options.exclude or options.num_nodes > 1 or options.num_gpus > 0):
        logger.warning(
            "%s is ignored because --include/--exclude/--num_gpus/--num_nodes was given", visible_env
        )
    elif visible:
        if max(visible) >= count:
            raise LaunchError(
                f"{visible_env}={env_text(visible)!r} names device {max(visible)}, but this machine "
                f"has {count} {accelerator} device(s)"
            )
        options = replace(options, include=f"localhost:{env_text(visible)}")
        logger.info("%s=%s: using --include=%s", visible_env, env_text(visible), options.include)
    if options.num_gpus > count and not is_cpu:
        raise LaunchError(f"--num_gpus {options.num_gpus} exceeds the {count} {accelerator} device(s) here")
    return {"localhost": count}, options


def env_text(devices: list[int]) -> str:
    """Device indices as a visible-devices value."""
    return ",".join(str(d) for d in devices)


def resolve_resources(options: LaunchOptions, env: dict[str, str]) -> tuple[ResolvedResources, LaunchOptions]:
    """Work out which slots of which hosts the job uses (``env`` loses the visible-devices variable)."""
    pool = fetch_hostfile(options.hostfile, required=not options.hostfile_is_default)
    from_hostfile = pool is not None
    if pool is None:
        if options.num_nodes > 1:
            raise LaunchError(
                f"--num_nodes {options.num_nodes} needs a hostfile listing that many hosts "
                f"({options.hostfile!r} does not exist)"
            )
        pool, options = _local_pool(options, env)
    active = parse_inclusion_exclusion(pool, options.include, options.exclude)
    if options.num_nodes > len(active):
        raise LaunchError(f"--num_nodes {options.num_nodes} but only {len(active)} host(s) are available")
    if from_hostfile and options.num_gpus > 0:
        for host in active:
            if options.num_gpus > pool[host]:
                raise LaunchError(
                    f"--num_gpus {options.num_gpus} exceeds slots={pool[host]} of host {host!r}"
                )
    active = apply_num_nodes_and_gpus(active, options.num_nodes, options.num_gpus)
    if not active:
        raise LaunchError("no slots are left to run on after --include/--exclude")
    return ResolvedResources(pool, active, from_hostfile), options


@contextlib.contextmanager
def pid_file(enabled: bool) -> Iterator[Path | None]:
    """``--save_pid``: ``/tmp/<pid>.ds`` holds the launcher's pid while it runs, removed on every exit."""
    if not enabled:
        yield None
        return
    path = Path(PID_FILE_BASEPATH) / f"{os.getpid()}.ds"
    atomic_write_text(path, f"{os.getpid()}\n")
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _resolve_master_addr(host: str) -> str:
    if host in LOCAL_HOSTS:
        return "127.0.0.1"
    try:
        return socket.gethostbyname(host)
    except OSError:
        raise LaunchError(
            f"cannot resolve host {host!r} to infer --master_addr; pass --master_addr"
        ) from None


def run_local(options: LaunchOptions, resolved: ResolvedResources, env: Mapping[str, str]) -> int:
    """This process is the node launcher: one node, or one node of a ``--no_ssh`` job."""
    active = resolved.active_resources
    node_rank = options.node_rank if options.no_ssh else 0
    check_node_rank(active, node_rank)
    if options.master_addr:
        master_addr = options.master_addr
    elif options.no_ssh:
        master_addr = _resolve_master_addr(next(iter(active)))
    else:
        master_addr = "127.0.0.1"
    elastic = None
    if options.elastic_training:
        elastic = elastic_policy(
            min_elastic_nodes=options.min_elastic_nodes,
            max_elastic_nodes=options.max_elastic_nodes,
            num_nodes=len(active),
        )
    launch = NodeLaunch(
        world_info=active,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=options.master_port,
        user_script=options.user_script,
        user_args=options.user_args,
        module=options.module,
        no_python=options.no_python,
        no_local_rank=options.no_local_rank,
        rank_log_dir=Path(options.enable_each_rank_log) if options.enable_each_rank_log else None,
        bind_cores_to_rank=options.bind_cores_to_rank,
        bind_core_list=options.bind_core_list,
        extra_env=load_deepspeed_env(),
        elastic=elastic,
    )
    _check_local_script(options)
    if node_rank == 0 and elastic is None:
        check_master_port(master_addr, options.master_port)  # rank 0, on this node, listens there
    return run_node(launch, base_env=env)


def _check_local_script(options: LaunchOptions) -> None:
    if options.module:
        return
    script = options.user_script
    if options.no_python and os.sep not in script:
        return  # looked up on PATH when it is started
    if not os.path.isfile(script):
        raise LaunchError(f"user script {script!r} not found")


def _probe(argv: list[str], env: Mapping[str, str], what: str) -> str:
    try:
        out = subprocess.run(
            argv,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise LaunchError(f"{what}: {err}") from None
    if out.returncode != 0:
        detail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise LaunchError(f"{what} (exit code {out.returncode}: {detail})")
    return out.stdout


def run_multinode(options: LaunchOptions, resolved: ResolvedResources, env: dict[str, str]) -> int:
    """Start every node's launcher through the ``--launcher`` runner and supervise it."""
    from ds_launch.runners import MultiNodeJob, get_runner
    from ds_launch.runners.base import MultiNodeRunner

    cls = get_runner(options.launcher)
    first = next(iter(resolved.active_resources))
    cwd = os.path.abspath(".")
    env = dict(env)
    env["PYTHONPATH"] = cwd + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    from ds_accel.probe import detect_accelerator_name

    exports = {**collect_exports(env, accelerator=detect_accelerator_name()), **load_deepspeed_env()}
    job = MultiNodeJob(
        options=options,
        active_resources=resolved.active_resources,
        resource_pool=resolved.resource_pool,
        master_addr=options.master_addr,
        exports=exports,
        job_id=uuid.uuid4().hex[:16],
        cwd=cwd,
    )
    runner: MultiNodeRunner = cls(job)
    runner.validate()
    if not runner.backend_exists():
        raise LaunchError(f"--launcher {cls.name}: {cls.binary!r} is not installed (not found on PATH)")
    runner_env = runner.get_env(env)
    if not options.no_ssh_check:
        _probe(
            runner.remote_cmd(first, ["hostname"]),
            runner_env,
            f"host {first!r} is not reachable by {cls.name} (set up passwordless ssh, "
            "or pass --no_ssh_check)",
        )
    if not job.master_addr:
        out = _probe(
            runner.remote_cmd(first, ["hostname", "-I"]),
            runner_env,
            f"cannot infer --master_addr with 'hostname -I' on {first!r}; pass --master_addr",
        )
        words = [w for w in out.replace(f"{first}:", " ").split() if w]
        if not words:
            raise LaunchError(f"'hostname -I' on {first!r} printed no address; pass --master_addr")
        job = replace(job, master_addr=words[0])
        runner = cls(job)
    runner.prepare()
    cmd = runner.get_cmd()
    logger.info("cmd = %s", shlex.join(cmd))
    spec = ProcessSpec(
        name=f"{cls.name} job",
        argv=tuple(cmd),
        env=runner_env,
        stop_argv=tuple(runner.kill_cmd() or ()) or None,
        failure_probe=runner.failure_probe,
    )
    result = Supervisor().run([spec])
    if result.failure is not None:
        sys.stderr.write(format_failure(result.failure))
    return result.exit_code


def launch(options: LaunchOptions) -> int:
    """Run the job ``options`` describe and return the exit code for the shell."""
    validate_options(options)
    options = replace(options, launcher=options.launcher.lower())
    if options.bind_core_list is not None and not options.bind_cores_to_rank:
        logger.warning("--bind_core_list has no effect without --bind_cores_to_rank")
    env = dict(os.environ)
    # Without a hostfile the visible-devices variable becomes --include and leaves ``env``: each
    # node launcher sets it again from the selected slots.
    resolved, options = resolve_resources(options, env)
    multi_node = (options.force_multi or len(resolved.active_resources) > 1) and not options.no_ssh
    with pid_file(options.save_pid):
        if options.autotuning:
            from ds_launch.autotuning import run_autotuning

            if not multi_node:
                _check_local_script(options)
            world_size = sum(len(slots) for slots in resolved.active_resources.values())
            return run_autotuning(options, world_size=world_size, env=env)
        if multi_node:
            return run_multinode(options, resolved, env)
        return run_local(options, resolved, env)
