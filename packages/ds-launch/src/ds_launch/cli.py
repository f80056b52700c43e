"""``deepspeed`` / ``ds``: DeepSpeed's launcher command line, on Typer.

Flag names, short forms and defaults are DeepSpeed's. Everything after the user script is passed to
it verbatim (``--deepspeed --deepspeed_config ds_config.json`` included). Errors are one line on
stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from ds_launch.errors import LaunchError, report_user_error
from ds_launch.hostfile import DLTS_HOSTFILE
from ds_launch.options import AUTOTUNING_MODES, LOG_LEVELS, TORCH_DISTRIBUTED_DEFAULT_PORT, LaunchOptions

PROG = "deepspeed"
_CONTEXT = {
    "allow_interspersed_args": False,
    "ignore_unknown_options": True,
    "help_option_names": ["-h", "--help"],
}


def build_app(handler: Callable[[LaunchOptions], int]) -> typer.Typer:
    """The Typer app; ``handler`` receives the parsed :class:`LaunchOptions` and returns the exit code."""
    app = typer.Typer(
        add_completion=False,
        context_settings=_CONTEXT,
        rich_markup_mode=None,
        help="DeepSpeed runner to help launch distributed multi-node/multi-gpu training jobs.",
    )

    @app.command()
    def deepspeed(  # noqa: PLR0913 - one parameter per DeepSpeed flag, by design
        user_script: Annotated[str, typer.Argument(help="User script to launch, followed by its arguments.")],
        user_args: Annotated[list[str] | None, typer.Argument(help="Arguments for the user script.")] = None,
        hostfile: Annotated[
            str,
            typer.Option(
                "-H",
                "--hostfile",
                help="Hostfile path (in MPI style) that defines the resource pool available to the job (e.g., worker-0 slots=4).",
            ),
        ] = DLTS_HOSTFILE,
        include: Annotated[
            str,
            typer.Option(
                "-i",
                "--include",
                help='Resources to use: NODE_SPEC[@NODE_SPEC ...], NODE_SPEC=NAME[:SLOT[,SLOT ...]], e.g. -i "worker-0@worker-1:0,2".',
            ),
        ] = "",
        exclude: Annotated[
            str,
            typer.Option(
                "-e",
                "--exclude",
                help='Resources NOT to use, same format as --include (mutually exclusive with it), e.g. -e "worker-1:0".',
            ),
        ] = "",
        num_nodes: Annotated[
            int,
            typer.Option(
                "--num_nodes", help="Total number of worker nodes to run on: the top N hosts of the hostfile."
            ),
        ] = -1,
        min_elastic_nodes: Annotated[
            int,
            typer.Option(
                "--min_elastic_nodes",
                help="Minimum number of nodes for elastic training (default 1 when enabled).",
            ),
        ] = -1,
        max_elastic_nodes: Annotated[
            int,
            typer.Option(
                "--max_elastic_nodes",
                help="Maximum number of nodes for elastic training (default num_nodes when enabled).",
            ),
        ] = -1,
        num_gpus: Annotated[
            int,
            typer.Option(
                "--num_gpus",
                "--num_accelerators",
                help="Max number of GPUs to use on each node: GPU ids [0:N). On a CPU-only machine, the number of CPU ranks.",
            ),
        ] = -1,
        master_port: Annotated[
            int,
            typer.Option(
                "--master_port", help="Port used by PyTorch distributed for communication during training."
            ),
        ] = TORCH_DISTRIBUTED_DEFAULT_PORT,
        master_addr: Annotated[
            str,
            typer.Option(
                "--master_addr", help="IP address of node 0; inferred via 'hostname -I' if not specified."
            ),
        ] = "",
        node_rank: Annotated[
            int,
            typer.Option(
                "--node_rank", help="ID of each node in the range [0:N). Only required when --no_ssh is set."
            ),
        ] = -1,
        launcher: Annotated[
            str,
            typer.Option(
                "--launcher",
                help="Launcher backend for multi-node training: PDSH, OpenMPI, MVAPICH, SLURM, MPICH, IMPI.",
            ),
        ] = "pdsh",
        launcher_args: Annotated[
            str,
            typer.Option("--launcher_args", help="Launcher-specific arguments, as a single quoted argument."),
        ] = "",
        module: Annotated[
            bool,
            typer.Option(
                "--module", help="Interpret the launch script as a Python module, like 'python -m'."
            ),
        ] = False,
        no_python: Annotated[
            bool,
            typer.Option("--no_python", help="Execute the script directly instead of prepending 'python'."),
        ] = False,
        no_local_rank: Annotated[
            bool, typer.Option("--no_local_rank", help="Do not pass --local_rank to the user's script.")
        ] = False,
        no_ssh: Annotated[
            bool,
            typer.Option("--no_ssh", help="Launch training independently on each node without ssh setup."),
        ] = False,
        no_ssh_check: Annotated[
            bool,
            typer.Option("--no_ssh_check", help="Do not perform the ssh check in multi-node launcher mode."),
        ] = False,
        force_multi: Annotated[
            bool,
            typer.Option(
                "--force_multi",
                help="Force multi-node launcher mode, e.g. to launch on a single remote node.",
            ),
        ] = False,
        save_pid: Annotated[
            bool,
            typer.Option("--save_pid", help="Save the launcher's pid at /tmp/<main-pid>.ds while it runs."),
        ] = False,
        enable_each_rank_log: Annotated[
            str | None,
            typer.Option(
                "--enable_each_rank_log",
                help="Redirect each rank's stdout and stderr into its own log file in this directory.",
            ),
        ] = None,
        autotuning: Annotated[
            str, typer.Option("--autotuning", help="Run the DeepSpeed autotuner before the job: tune or run.")
        ] = "",
        elastic_training: Annotated[
            bool,
            typer.Option(
                "--elastic_training",
                help="Enable elastic training (torch.distributed.elastic, c10d rendezvous).",
            ),
        ] = False,
        bind_cores_to_rank: Annotated[
            bool, typer.Option("--bind_cores_to_rank", help="Bind each rank to different cores of the host.")
        ] = False,
        bind_core_list: Annotated[
            str | None,
            typer.Option(
                "--bind_core_list",
                help="Cores to bind to, e.g. 1,3-5,7 => [1,3,4,5,7]; default: all cores this process may use.",
            ),
        ] = None,
        ssh_port: Annotated[
            int | None, typer.Option("--ssh_port", help="SSH port to use for remote connections.")
        ] = None,
        venv_script: Annotated[
            str | None,
            typer.Option("--venv_script", help="Python virtual environment activation script for the job."),
        ] = None,
        log_level: Annotated[
            str,
            typer.Option("--log_level", help="Launcher log level: debug, info, warning, error, critical."),
        ] = "info",
        quiet: Annotated[
            bool, typer.Option("-q", "--quiet", help="Be as quiet as possible (alias of --log_level error).")
        ] = False,
    ) -> int:
        if user_script.startswith("-") and user_script != "-":
            raise LaunchError(f"no such option: {user_script.split('=')[0]}")
        if autotuning and autotuning not in AUTOTUNING_MODES:
            raise LaunchError(f"--autotuning {autotuning!r}: expected one of {', '.join(AUTOTUNING_MODES)}")
        if log_level.lower() not in LOG_LEVELS:
            raise LaunchError(f"--log_level {log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
        options = LaunchOptions(
            hostfile=hostfile,
            include=include,
            exclude=exclude,
            num_nodes=num_nodes,
            min_elastic_nodes=min_elastic_nodes,
            max_elastic_nodes=max_elastic_nodes,
            num_gpus=num_gpus,
            master_port=master_port,
            master_addr=master_addr,
            node_rank=node_rank,
            launcher=launcher,
            launcher_args=launcher_args,
            module=module,
            no_python=no_python,
            no_local_rank=no_local_rank,
            no_ssh=no_ssh,
            no_ssh_check=no_ssh_check,
            force_multi=force_multi,
            save_pid=save_pid,
            # DeepSpeed's default for this flag is the string "None".
            enable_each_rank_log=None if enable_each_rank_log in (None, "None") else enable_each_rank_log,
            autotuning=autotuning,
            elastic_training=elastic_training,
            bind_cores_to_rank=bind_cores_to_rank,
            bind_core_list=bind_core_list,
            ssh_port=ssh_port,
            venv_script=venv_script,
            log_level="error" if quiet else log_level.lower(),
            quiet=quiet,
            user_script=user_script,
            user_args=tuple(user_args or ()),
        )
        return handler(options)

    return app


def _invoke(argv: list[str] | None, handler: Callable[[LaunchOptions], int], prog: str = PROG) -> int:
    command = typer.main.get_command(build_app(handler))
    try:
        result = command.main(
            args=sys.argv[1:] if argv is None else argv, prog_name=prog, standalone_mode=False
        )
    except (LaunchError, typer.TyperException) as err:
        message = err.format_message() if isinstance(err, typer.TyperException) else str(err)
        report_user_error(err, f"{prog}: error: {message}")
        return err.exit_code
    except typer.Abort:
        return 1
    return result if isinstance(result, int) else 0


def parse_args(args: list[str] | None = None) -> LaunchOptions:
    """DeepSpeed's ``runner.parse_args``: the options a command line asks for, without launching."""
    captured: list[LaunchOptions] = []

    def capture(options: LaunchOptions) -> int:
        captured.append(options)
        return 0

    code = _invoke(args, capture)
    if not captured:
        raise SystemExit(code)
    return captured[0]


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        format="[deepspeed] %(levelname)s: %(message)s", level=level.upper(), stream=sys.stderr
    )


def run(options: LaunchOptions) -> int:
    """Launch ``options`` (the handler the ``deepspeed`` command uses)."""
    from ds_launch.driver import launch

    _configure_logging(options.log_level)
    return launch(options)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point of ``deepspeed`` and ``ds``."""
    sys.exit(_invoke(argv, run))
