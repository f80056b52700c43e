"""What environment every rank on every node sees.

Three sources, later ones winning: the launching shell's variables whose names start with an export
prefix (NCCL*, PYTHON*, ... plus the accelerator's own), the ``.deepspeed_env`` files (``~`` first,
then the working directory; ``DS_ENV_FILE`` renames the file or points at one), and the launcher's
own per-rank variables (RANK, LOCAL_RANK, WORLD_SIZE, ...).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from ds_launch.errors import DEBUG_ENV, LaunchError

DEEPSPEED_ENVIRONMENT_NAME = ".deepspeed_env"
ENV_FILE_VARIABLE = "DS_ENV_FILE"

# Prefixes exported to remote nodes whatever the accelerator (DeepSpeed's list, plus NCCL which the
# seed promises by default, plus our debug switch so remote ranks print tracebacks too).
EXPORT_ENVS: tuple[str, ...] = ("NCCL", "PYTHON", "MLFLOW", "MV2", "UCX", DEBUG_ENV)

# The accelerator's own prefixes (DeepSpeed's ``export_envs()`` per accelerator).
ACCELERATOR_EXPORT_ENVS: dict[str, tuple[str, ...]] = {
    "cuda": ("NCCL",),
    "npu": ("ASCEND", "HCCL", "LD_LIBRARY", "PATH"),
}

# Where a cluster sets a variable per node, exporting the launching node's value would be wrong.
EXCLUDE_ENVS: dict[str, tuple[str, ...]] = {"AISC_JOB_NAME": ("NCCL_IB_HCA", "UCX_NET_DEVICES")}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def collect_exports(env: Mapping[str, str], *, accelerator: str = "cpu") -> dict[str, str]:
    """The variables of ``env`` that multi-node runners forward to every remote rank."""
    prefixes = EXPORT_ENVS + ACCELERATOR_EXPORT_ENVS.get(accelerator.split(".")[0], ())
    excluded = {name for key, names in EXCLUDE_ENVS.items() if key in env for name in names}
    return {
        key: value
        for key, value in env.items()
        if key.startswith(prefixes) and key not in excluded and _NAME.match(key)
    }


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse_env_lines(lines: list[str], *, source: str) -> dict[str, str]:
    """Parse ``VAR=VAL`` lines (``#`` comments, blank lines and a leading ``export`` allowed).

    The value is taken literally after trimming surrounding blanks and one pair of matching quotes;
    it is never evaluated by a shell, here or on a remote node.
    """
    values: dict[str, str] = {}
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("export "):
            text = text[len("export ") :].lstrip()
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep:
            raise LaunchError(f"{source} line {number}: expected VAR=VALUE, got {raw.strip()!r}")
        if not _NAME.match(name):
            raise LaunchError(f"{source} line {number}: {name!r} is not a valid variable name")
        values[name] = _unquote(value.strip())
    return values


def env_file_paths(*, env: Mapping[str, str], home: Path, cwd: Path) -> list[Path]:
    """The ``.deepspeed_env`` files to read, in order (home first, so the working directory wins)."""
    name = env.get(ENV_FILE_VARIABLE) or DEEPSPEED_ENVIRONMENT_NAME
    if os.path.isabs(name):
        candidates = [Path(name)]
    else:
        candidates = [home / name, cwd / name]
    found: list[Path] = []
    for path in candidates:
        if path.is_file() and all(not path.samefile(seen) for seen in found):
            found.append(path)
    if not found and env.get(ENV_FILE_VARIABLE):
        where = candidates[0] if len(candidates) == 1 else f"{home} or {cwd}"
        raise LaunchError(f"{ENV_FILE_VARIABLE}={name!r}: no such file in {where}")
    return found


def load_deepspeed_env(
    *, env: Mapping[str, str] | None = None, home: Path | None = None, cwd: Path | None = None
) -> dict[str, str]:
    """Read every ``.deepspeed_env`` that applies; later files override earlier ones."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    cwd = Path.cwd() if cwd is None else cwd
    values: dict[str, str] = {}
    for path in env_file_paths(env=env, home=home, cwd=cwd):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise LaunchError(f"{path}: cannot read it ({err})") from None
        values.update(parse_env_lines(lines, source=str(path)))
    return values
