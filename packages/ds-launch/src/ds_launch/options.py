"""The launcher's options: DeepSpeed's flag names, defaults and attribute names, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass

from ds_launch.cores import parse_range_list
from ds_launch.errors import LaunchError
from ds_launch.hostfile import DLTS_HOSTFILE

TORCH_DISTRIBUTED_DEFAULT_PORT = 29500
LAUNCHERS = ("pdsh", "openmpi", "mvapich", "slurm", "mpich", "impi")
AUTOTUNING_MODES = ("tune", "run")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True, kw_only=True)
class LaunchOptions:
    """What ``deepspeed [flags] script args`` asked for (the attributes of DeepSpeed's ``parse_args``)."""

    hostfile: str = DLTS_HOSTFILE
    include: str = ""
    exclude: str = ""
    num_nodes: int = -1
    min_elastic_nodes: int = -1
    max_elastic_nodes: int = -1
    num_gpus: int = -1
    master_port: int = TORCH_DISTRIBUTED_DEFAULT_PORT
    master_addr: str = ""
    node_rank: int = -1
    launcher: str = "pdsh"
    launcher_args: str = ""
    module: bool = False
    no_python: bool = False
    no_local_rank: bool = False
    no_ssh: bool = False
    no_ssh_check: bool = False
    force_multi: bool = False
    save_pid: bool = False
    enable_each_rank_log: str | None = None
    autotuning: str = ""
    elastic_training: bool = False
    bind_cores_to_rank: bool = False
    bind_core_list: str | None = None
    ssh_port: int | None = None
    venv_script: str | None = None
    log_level: str = "info"
    quiet: bool = False
    user_script: str = ""
    user_args: tuple[str, ...] = ()

    @property
    def hostfile_is_default(self) -> bool:
        return self.hostfile == DLTS_HOSTFILE


def validate_options(options: LaunchOptions) -> None:
    """Reject contradictory or out-of-range flags before anything is started."""
    if not options.user_script:
        raise LaunchError("missing the user script (usage: deepspeed [flags] SCRIPT [ARGS ...])")
    if options.launcher.lower() not in LAUNCHERS:
        raise LaunchError(
            f"--launcher {options.launcher!r} is unknown; expected one of {', '.join(LAUNCHERS)}"
        )
    if options.module and options.no_python:
        raise LaunchError("--module and --no_python cannot be used together")
    if options.include and options.exclude:
        raise LaunchError("--include and --exclude are mutually exclusive; pass only one")
    if (options.num_nodes >= 0 or options.num_gpus >= 0) and (options.include or options.exclude):
        raise LaunchError("--num_nodes/--num_gpus cannot be combined with --include/--exclude")
    for flag, value in (("--num_nodes", options.num_nodes), ("--num_gpus", options.num_gpus)):
        if value == 0 or value < -1:
            raise LaunchError(f"{flag} {value}: expected a positive count (or -1 for all)")
    if not 0 < options.master_port < 65536:
        raise LaunchError(f"--master_port {options.master_port}: expected a port in [1, 65535]")
    if options.ssh_port is not None and not 0 < options.ssh_port < 65536:
        raise LaunchError(f"--ssh_port {options.ssh_port}: expected a port in [1, 65535]")
    if options.no_ssh and options.node_rank < 0:
        raise LaunchError("--no_ssh needs --node_rank N (this node's index in the hostfile, from 0)")
    if options.bind_core_list is not None:
        parse_range_list(options.bind_core_list)
    if options.enable_each_rank_log is not None and not options.enable_each_rank_log.strip():
        raise LaunchError("--enable_each_rank_log needs a directory")
