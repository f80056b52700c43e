"""The command line each rank runs: DeepSpeed's ``python -u [-m] script --local_rank=N args``."""

from __future__ import annotations

from collections.abc import Sequence

from ds_launch.errors import LaunchError


def user_command(
    *,
    python: str | None,
    module: bool,
    script: str,
    args: Sequence[str],
    local_rank: int | None,
) -> list[str]:
    """Build one rank's argv.

    Args:
        python: the interpreter, or ``None`` for ``--no_python`` (the script is executed directly).
        module: run ``script`` as a module (``python -m``).
        script: the user's script (or module, or executable).
        args: the user's arguments, passed through verbatim.
        local_rank: appended as ``--local_rank=N`` right after the script unless ``None``
            (``--no_local_rank``).
    """
    if module and python is None:
        raise LaunchError("--module and --no_python cannot be used together")
    argv = [python, "-u"] if python is not None else []
    if module:
        argv.append("-m")
    argv.append(script)
    if local_rank is not None:
        argv.append(f"--local_rank={local_rank}")
    argv.extend(args)
    return argv
