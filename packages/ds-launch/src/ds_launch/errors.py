"""The one error type the launcher reports to users."""

from __future__ import annotations


class LaunchError(ValueError):
    """Bad input or an unusable environment: shown as one line, and the CLI exits with ``exit_code``.

    The message names the offending text (flag, hostfile line, ``.deepspeed_env`` line) and says what
    was expected, so it never needs a traceback to be understood.
    """

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
