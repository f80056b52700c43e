"""Rank shim: give a rank started by someone else (mpirun, srun, torch's elastic agent) DeepSpeed's view.

``python -m ds_launch.rank_exec --scheme openmpi [options] -- SCRIPT ARGS`` reads the starter's rank
variables, sets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_SIZE, CROSS_RANK and CROSS_SIZE, binds cores,
redirects output to a per-rank log when asked, and then *replaces itself* (``os.execvpe``) with the
user's command plus ``--local_rank=N``: no extra process stays around, and torch is never imported.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, MutableMapping

from ds_accel.starters import STARTERS, RankVariables
from ds_launch.commands import user_command
from ds_launch.cores import cores_for_rank, resolve_core_list
from ds_launch.errors import LaunchError

# Each starter's variables are defined once, torch-free, in ds_accel.starters (ds_comm's discovery reads
# the same table).
SCHEMES: dict[str, RankVariables] = STARTERS


def _read_int(env: Mapping[str, str], name: str, scheme: str) -> int:
    value = env.get(name)
    if value is None:
        raise LaunchError(f"{name} is not set: was this rank started by {scheme}?")
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not an integer") from None


def map_rank_env(env: MutableMapping[str, str], *, scheme: str) -> int:
    """Write DeepSpeed's rank variables from ``scheme``'s into ``env``; return the local rank.

    Starters without a node index (the MPIs) place ranks by slot on uniform nodes, so the node index
    is ``rank // local_size``.
    """
    spec = SCHEMES[scheme]
    rank = _read_int(env, spec.rank, scheme)
    size = _read_int(env, spec.size, scheme)
    local_rank = _read_int(env, spec.local_rank, scheme)
    if spec.local_size in env:
        local_size = _read_int(env, spec.local_size, scheme)
    elif scheme == "slurm" and spec.cross_size:  # SLURM_NTASKS_PER_NODE needs --ntasks-per-node
        local_size = size // _read_int(env, spec.cross_size, scheme)
    else:
        local_size = _read_int(env, spec.local_size, scheme)
    cross_rank = _read_int(env, spec.cross_rank, scheme) if spec.cross_rank else rank // local_size
    cross_size = _read_int(env, spec.cross_size, scheme) if spec.cross_size else max(1, size // local_size)
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(local_rank),
        LOCAL_SIZE=str(local_size),
        CROSS_RANK=str(cross_rank),
        CROSS_SIZE=str(cross_size),
    )
    return local_rank


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ds_launch.rank_exec", allow_abbrev=False)
    parser.add_argument("--scheme", required=True, choices=sorted(SCHEMES))
    parser.add_argument(
        "--python", default=None, help="interpreter to run the script with (unset: --no_python)"
    )
    parser.add_argument("--module", action="store_true")
    parser.add_argument("--no_local_rank", action="store_true")
    parser.add_argument("--bind_cores_to_rank", action="store_true")
    parser.add_argument("--bind_core_list", default=None)
    parser.add_argument("--rank_log_dir", default=None)
    parser.add_argument("--log_prefix", default=None)
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _redirect_output(log_dir: str, prefix: str, rank: str) -> None:
    os.makedirs(log_dir, exist_ok=True)
    fd = os.open(
        os.path.join(log_dir, f"{prefix}_rank{rank}.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644
    )
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def prepare(argv: list[str], env: MutableMapping[str, str]) -> list[str]:
    """Apply everything to ``env`` and this process; return the command to exec."""
    opts = _parser().parse_args(argv)
    local_rank = map_rank_env(env, scheme=opts.scheme)
    if opts.bind_cores_to_rank:
        cores = cores_for_rank(
            resolve_core_list(opts.bind_core_list),
            num_local_procs=int(env["LOCAL_SIZE"]),
            local_rank=local_rank,
        )
        os.sched_setaffinity(0, cores)
        env["OMP_NUM_THREADS"] = str(len(cores))
    if opts.rank_log_dir:
        _redirect_output(opts.rank_log_dir, opts.log_prefix or time.strftime("%Y%m%d%H%M%S"), env["RANK"])
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    return user_command(
        python=opts.python,
        module=opts.module,
        script=opts.script,
        args=args,
        local_rank=None if opts.no_local_rank else local_rank,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: map the variables, then exec the user's command (never returns on success)."""
    env = dict(os.environ)
    try:
        command = prepare(sys.argv[1:] if argv is None else argv, env)
    except LaunchError as err:
        print(f"ds_launch.rank_exec: error: {err}", file=sys.stderr)
        return err.exit_code
    try:
        os.execvpe(command[0], command, env)
    except OSError as err:
        print(f"ds_launch.rank_exec: error: cannot run {command[0]!r}: {err.strerror}", file=sys.stderr)
        return 127
    return 0  # pragma: no cover - execvpe does not return


if __name__ == "__main__":
    sys.exit(main())
