"""Hostfiles in OpenMPI/Horovod form: ``worker-1 slots=4``, one host a line.

Comments (``#`` to the end of the line) and blank lines are allowed. Every other line must name a host
and give ``slots=N``; OpenMPI's ``max_slots=N`` is accepted and ignored. A host listed twice, a host
name a shell or a resource filter could misread, or a file with no hosts is an error naming the line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ds_launch.errors import LaunchError

DLTS_HOSTFILE = "/job/hostfile"

# Host names reach pdsh's -w list, NODE_SPEC filters (which split on '@', ':' and ',') and remote
# shells, so only the characters DNS names and IPv4 addresses use are allowed.
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IGNORED_KEYS = ("max_slots", "max-slots")


def _parse_line(text: str, *, where: str) -> tuple[str, int]:
    fields = text.split()
    host, options = fields[0], fields[1:]
    if not HOST_NAME.match(host):
        raise LaunchError(
            f"{where}: bad host name {host!r} (expected letters, digits, '.', '-' or '_'): {text!r}"
        )
    slots: int | None = None
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise LaunchError(f"{where}: expected 'HOST slots=N', got {text!r}")
        if key == "slots":
            if slots is not None:
                raise LaunchError(f"{where}: 'slots=' given twice: {text!r}")
            if not value.isdigit() or int(value) < 1:
                raise LaunchError(f"{where}: slots must be a positive integer, got {option!r}")
            slots = int(value)
        elif key not in _IGNORED_KEYS:
            raise LaunchError(f"{where}: unknown key {key!r} (expected 'HOST slots=N'): {text!r}")
    if slots is None:
        raise LaunchError(f"{where}: expected 'HOST slots=N', got {text!r}")
    return host, slots


def parse_hostfile(lines: Iterable[str], *, source: str = "hostfile") -> dict[str, int]:
    """Parse hostfile lines into ``{host: slots}`` in file order.

    Raises:
        LaunchError: on a malformed line, a duplicate host, or when no host is listed.
    """
    pool: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        where = f"{source} line {number}"
        host, slots = _parse_line(text, where=where)
        if host in pool:
            raise LaunchError(f"{where}: host {host!r} is listed twice (first on line {first_seen[host]})")
        pool[host] = slots
        first_seen[host] = number
    if not pool:
        raise LaunchError(f"{source} lists no hosts (expected lines like 'worker-1 slots=4')")
    return pool


def fetch_hostfile(hostfile_path: str | Path, *, required: bool = False) -> dict[str, int] | None:
    """Read and parse a hostfile; ``None`` when it does not exist and ``required`` is false.

    DeepSpeed's default path (``/job/hostfile``) is optional: without it the launcher uses the local
    devices. A path the user names explicitly is ``required``: a typo must not silently turn a
    multi-node job into a single-node one.
    """
    path = Path(hostfile_path)
    if not path.is_file():
        if required:
            raise LaunchError(f"--hostfile {str(path)!r}: no such file")
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LaunchError(f"--hostfile {str(path)!r}: cannot read it ({err})") from None
    return parse_hostfile(text.splitlines(), source=f"hostfile {str(path)!r}")
