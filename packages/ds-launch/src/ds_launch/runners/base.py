"""The multi-node runner interface and the name registry the ``--launcher`` flag looks up.

A runner turns a resolved job into an argument list (never a shell string): the command to start,
the environment to start it with, and optionally a stop command and a failure probe for the
supervisor. Anything a runner sends through a remote shell is shell-quoted.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from ds_launch.errors import LaunchError
from ds_launch.options import LaunchOptions
from ds_launch.resources import Resources


@dataclass(frozen=True, kw_only=True)
class MultiNodeJob:
    """A job resolved for a multi-node launch."""

    options: LaunchOptions
    active_resources: Resources
    resource_pool: dict[str, int]
    master_addr: str
    exports: Mapping[str, str] = field(default_factory=dict)
    job_id: str = "0"
    cwd: str = "."
    python: str = sys.executable

    @property
    def world_size(self) -> int:
        return sum(len(slots) for slots in self.active_resources.values())


class MultiNodeRunner(ABC):
    """One way of starting ranks on many nodes (pdsh, an MPI's mpirun, slurm's srun)."""

    name: ClassVar[str]
    binary: ClassVar[str]

    def __init__(self, job: MultiNodeJob) -> None:
        self.job = job
        self.options = job.options

    # -- what the driver asks ---------------------------------------------------------------------
    def backend_exists(self) -> bool:
        """Whether this runner's program is installed here."""
        return shutil.which(self.binary) is not None

    def validate(self) -> None:  # noqa: B027 - an optional hook: most runners accept every flag
        """Reject flags this runner cannot honour (raise :class:`LaunchError`)."""

    def prepare(self) -> None:  # noqa: B027 - an optional hook: most runners write no files
        """Write whatever files the command refers to (called once, just before launching)."""

    @abstractmethod
    def get_cmd(self) -> list[str]:
        """The command that starts the whole job."""

    def get_env(self, base_env: Mapping[str, str]) -> dict[str, str]:
        """The environment to start :meth:`get_cmd` with."""
        return dict(base_env)

    def kill_cmd(self) -> list[str] | None:
        """A command that stops the job's processes on every node, if signalling ours is not enough."""
        return None

    def failure_probe(self, line: str) -> tuple[str, int] | None:
        """Recognise an output line reporting that one node failed: ``(host, exit code)``."""
        return None

    def remote_cmd(self, host: str, argv: list[str]) -> list[str]:
        """Run ``argv`` on ``host`` the way this runner reaches hosts (ssh by default)."""
        ssh = ["ssh", "-o", "PasswordAuthentication=no", "-o", "BatchMode=yes"]
        if self.options.ssh_port is not None:
            ssh += ["-p", str(self.options.ssh_port)]
        return [*ssh, host, shlex.join(argv)]

    # -- helpers ----------------------------------------------------------------------------------
    def launcher_args(self) -> list[str]:
        """``--launcher_args``, split like a shell would."""
        try:
            return shlex.split(self.options.launcher_args)
        except ValueError as err:
            raise LaunchError(f"--launcher_args {self.options.launcher_args!r}: {err}") from None

    def reject_filters(self) -> None:
        """DeepSpeed's MPI runners place ranks by count only: no slot filters, no count limits."""
        opts = self.options
        if opts.include or opts.exclude:
            raise LaunchError(f"--launcher {self.name} does not support --include/--exclude")
        if opts.num_nodes != -1 or opts.num_gpus != -1:
            raise LaunchError(f"--launcher {self.name} does not support --num_nodes/--num_gpus")

    def procs_per_node(self) -> int:
        """The common slot count of every host (MPI's -ppn needs it to be the same everywhere)."""
        counts = {host: len(slots) for host, slots in self.job.active_resources.items()}
        if len(set(counts.values())) > 1:
            raise LaunchError(f"--launcher {self.name} needs the same slot count on every host, got {counts}")
        return next(iter(counts.values()))

    def rank_command(self, scheme: str) -> list[str]:
        """The per-rank command: the rank shim, which maps ``scheme``'s variables and execs the script."""
        opts = self.options
        argv = [self.job.python, "-u", "-m", "ds_launch.rank_exec", f"--scheme={scheme}"]
        if not opts.no_python:
            argv.append(f"--python={self.job.python}")
        argv += ["--module"] if opts.module else []
        argv += ["--no_local_rank"] if opts.no_local_rank else []
        if opts.bind_cores_to_rank:
            argv.append("--bind_cores_to_rank")
            argv += [f"--bind_core_list={opts.bind_core_list}"] if opts.bind_core_list else []
        if opts.enable_each_rank_log:
            argv.append(f"--rank_log_dir={opts.enable_each_rank_log}")
        return [*argv, opts.user_script, *opts.user_args]

    def rank_exports(self) -> dict[str, str]:
        """Exports plus the rendezvous address every rank needs."""
        return {
            **self.job.exports,
            "MASTER_ADDR": self.job.master_addr,
            "MASTER_PORT": str(self.options.master_port),
        }


RUNNERS: dict[str, type[MultiNodeRunner]] = {}


def register_runner(cls: type[MultiNodeRunner]) -> type[MultiNodeRunner]:
    """Class decorator: make ``cls`` available as ``--launcher cls.name``."""
    RUNNERS[cls.name] = cls
    return cls


def get_runner(name: str) -> type[MultiNodeRunner]:
    """The runner class for a ``--launcher`` value (case-insensitive)."""
    try:
        return RUNNERS[name.lower()]
    except KeyError:
        raise LaunchError(f"--launcher {name!r} is unknown; expected one of {', '.join(RUNNERS)}") from None
