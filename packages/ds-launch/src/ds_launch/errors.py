"""The one error type the launcher reports to users, and how a user mistake is printed."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Mapping
from typing import TextIO

#: The debug switch (the same variable the ranks read, see ds_comm.rank_exit): ``DS_DEBUG=1`` adds the
#: traceback to every one-line user error. The launcher passes it to every rank on every node.
DEBUG_ENV = "DS_DEBUG"


class LaunchError(ValueError):
    """Bad input or an unusable environment: shown as one line, and the CLI exits with ``exit_code``.

    The message names the offending text (flag, hostfile line, ``.deepspeed_env`` line) and says what
    was expected, so it never needs a traceback to be understood.
    """

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def debug_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``DS_DEBUG`` asks for tracebacks (any value but empty, ``0``, ``false``, ``no``, ``off``)."""
    value = (os.environ if environ is None else environ).get(DEBUG_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def report_user_error(err: BaseException, line: str, *, stream: TextIO | None = None) -> None:
    """Print ``line`` (one line naming the mistake), preceded by ``err``'s traceback under ``DS_DEBUG``."""
    out = sys.stderr if stream is None else stream
    if debug_enabled():
        traceback.print_exception(type(err), err, err.__traceback__, file=out)
    print(line, file=out)
