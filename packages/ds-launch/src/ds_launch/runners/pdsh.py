"""pdsh: run the node launcher on every host at once.

pdsh hands the remote command to a shell (over ssh by default), so the node launcher's command is
built as one shell script in which every word is ``shlex.quote``-d. pdsh substitutes ``%n`` (the
host's index in ``-w``) into the script, so literal ``%`` are doubled first and ``%n`` is placed last.
With ``--launcher_args "-R exec"`` pdsh runs the command locally per host name without a shell; the
script then runs under ``sh -c``, identically.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from ds_launch.resources import encode_world_info
from ds_launch.runners.base import MultiNodeRunner, register_runner

PDSH_MAX_FAN_OUT = 1024
_NODE_RANK_TOKEN = "@@DS_NODE_RANK@@"
# Note [lost host]: ssh notices a host that vanished (power, link) only when it writes to it, so
# without keep-alives a job waits for the ranks' collective timeout and then reports a surviving
# host. With them, pdsh's ssh to the lost host exits 255 within about 15s and the failure names it;
# ConnectTimeout bounds the stop command's ssh to that host. Values the user appends come first
# (ssh keeps the first value of an option) and so win.
SSH_LIVENESS_ARGS = "-o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o ConnectTimeout=10"
_EXITED = re.compile(r"^pdsh@[^:]*: (\S+): .*exited with exit code (\d+)\s*$")


@register_runner
class PDSHRunner(MultiNodeRunner):
    """``pdsh -S -f 1024 -w host1,host2 [launcher_args] <node launcher script>``."""

    name = "pdsh"
    binary = "pdsh"

    def rcmd_type(self) -> str:
        """The pdsh remote-command module in use: ``-R`` in ``--launcher_args``, else ssh."""
        args = self.launcher_args()
        for index, arg in enumerate(args):
            if arg == "-R" and index + 1 < len(args):
                return args[index + 1]
            if arg.startswith("-R") and len(arg) > 2:
                return arg[2:]
        return "ssh"

    def get_env(self, base_env: Mapping[str, str]) -> dict[str, str]:
        env = dict(base_env)
        env["PDSH_RCMD_TYPE"] = "ssh"
        append = [env.get("PDSH_SSH_ARGS_APPEND", ""), SSH_LIVENESS_ARGS]  # Note [lost host]
        if self.options.ssh_port is not None:
            append.append(f"-p {self.options.ssh_port}")
        env["PDSH_SSH_ARGS_APPEND"] = " ".join(part for part in append if part.strip())
        return env

    def _pdsh(self, hosts: list[str]) -> list[str]:
        return ["pdsh", "-S", "-f", str(PDSH_MAX_FAN_OUT), "-w", ",".join(hosts), *self.launcher_args()]

    def _remote(self, script: str) -> list[str]:
        """The remote part of a pdsh command line for ``script`` (with ``%`` already escaped)."""
        return ["sh", "-c", script] if self.rcmd_type() == "exec" else [script]

    def node_launcher_argv(self) -> list[str]:
        """``python -m ds_launch.node ...`` with ``--node_rank`` left for pdsh to fill in."""
        opts, job = self.options, self.job
        argv = [
            job.python,
            "-u",
            "-m",
            "ds_launch.node",
            f"--world_info={encode_world_info(job.active_resources)}",
            f"--node_rank={_NODE_RANK_TOKEN}",
            f"--master_addr={job.master_addr}",
            f"--master_port={opts.master_port}",
            f"--job_id={job.job_id}",
        ]
        for flag in ("module", "no_python", "no_local_rank", "bind_cores_to_rank"):
            if getattr(opts, flag):
                argv.append(f"--{flag}")
        if opts.bind_core_list:
            argv.append(f"--bind_core_list={opts.bind_core_list}")
        if opts.enable_each_rank_log:
            argv.append(f"--enable_each_rank_log={opts.enable_each_rank_log}")
        if opts.elastic_training:
            argv += [
                "--elastic_training",
                f"--min_elastic_nodes={opts.min_elastic_nodes}",
                f"--max_elastic_nodes={opts.max_elastic_nodes}",
            ]
        return [*argv, opts.user_script, *opts.user_args]

    def node_script(self) -> str:
        """The shell script each host runs: exports, ``cd``, then ``exec`` the node launcher."""
        parts = [f"export {key}={shlex.quote(value)};" for key, value in self.job.exports.items()]
        if self.options.venv_script:
            parts.append(f". {shlex.quote(self.options.venv_script)};")
        parts.append(f"cd {shlex.quote(self.job.cwd)} &&")
        parts.append("exec " + shlex.join(self.node_launcher_argv()))
        return " ".join(parts).replace("%", "%%").replace(_NODE_RANK_TOKEN, "%n")

    def get_cmd(self) -> list[str]:
        return [*self._pdsh(list(self.job.active_resources)), *self._remote(self.node_script())]

    def kill_cmd(self) -> list[str]:
        # The bracket keeps the pattern from matching the shell that runs pkill itself.
        pattern = f"[-]-job_id={self.job.job_id}"
        script = f"pkill -TERM -f {shlex.quote(pattern)}; true"
        return [*self._pdsh(list(self.job.active_resources)), *self._remote(script)]

    def failure_probe(self, line: str) -> tuple[str, int] | None:
        match = _EXITED.match(line)
        return (match.group(1), int(match.group(2))) if match else None

    def remote_cmd(self, host: str, argv: list[str]) -> list[str]:
        script = shlex.join(argv).replace("%", "%%")
        return ["pdsh", "-S", "-w", host, *self.launcher_args(), *self._remote(script)]
