"""How a rank ends when the script dies of an uncaught exception: one report, then exit code 1.

Note [failing exit]: a rank that raises while its process group is up used to end, about one run in
ten, in SIGABRT (exit 134, "terminate called without an active exception") instead of exit 1. The
cause, seen in a core dump: a gloo worker thread (``ProcessGroupGloo::runLoop``) drops its reference
to a finished ``Work`` only after the waiter has moved on; when that was the last reference, the
Work's destructor releases tensors whose Python objects need a decref, so the thread takes the GIL.
If the main thread has meanwhile started ``Py_FinalizeEx``, CPython ends a thread that asks for the
GIL with ``pthread_exit``; the forced unwind meets the C++ destructor (``noexcept``) and libstdc++
calls ``std::terminate``. A clean exit destroys the group at ``atexit`` (Note [exit teardown] in
ds_comm.init), which joins those threads before finalisation. A failing rank cannot: destroying the
group waits for the collectives in flight, and a peer that never joins them would hang it for the
whole process-group timeout.

So, while a group is up, the hook below reports the error, does what a normal exit does before
finalisation (join non-daemon threads, run ``atexit`` callbacks: user loggers, ``logging.shutdown``),
flushes stdout and stderr, and leaves with ``os._exit(1)``. Skipping finalisation is what makes it
safe: no thread can be killed mid-destructor, and no C++ static destructor runs while gloo threads
still work. What is lost is only what finalisation alone would do: ``__del__`` of objects still
referenced at exit (a file the script never closed or flushed keeps its unwritten buffer). The
group's sockets close with the process, after the report was written, so the launcher reads this
rank's own error before the peers' "connection closed". ``KeyboardInterrupt`` ends the way Python
ends it (killed by SIGINT, exit 130). Without a group there are no such threads: Python exits normally.

Note [user errors]: an exception whose class sets ``ds_user_error = True`` (a config mistake, a port
in use) is the user's to fix, not a bug: it is printed as one line, ``[rank0] DeepSpeedConfigError:
'optimizer.params.betas': ...``, with the traceback only when ``DS_DEBUG=1``. Every other exception
keeps its full traceback.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

import torch.distributed as dist

#: The debug switch: ``DS_DEBUG=1`` prints user errors with their traceback (the launcher passes it on).
DEBUG_ENV = "DS_DEBUG"
#: The class attribute that marks an exception type as a user mistake (Note [user errors]).
USER_ERROR_ATTR = "ds_user_error"

ExceptHook = Callable[[type[BaseException], BaseException, "TracebackType | None"], Any]

_handling = False
failing = False


def debug_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``DS_DEBUG`` asks for full tracebacks (any value but empty, ``0``, ``false``, ``no``)."""
    value = (os.environ if environ is None else environ).get(DEBUG_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a user mistake that reads best as one line (Note [user errors])."""
    return bool(getattr(type(exc), USER_ERROR_ATTR, False))


def _rank_label() -> str:
    if dist.is_available() and dist.is_initialized():
        return f"[rank{dist.get_rank()}] "
    rank = os.environ.get("RANK", "")
    return f"[rank{rank}] " if rank.isdigit() else ""


def one_line(exc: BaseException) -> str:
    """``[rankN] TypeName: message`` on one line (the rank label when the rank is known)."""
    message = " ".join(str(exc).split())
    return (
        f"{_rank_label()}{type(exc).__name__}: {message}"
        if message
        else f"{_rank_label()}{type(exc).__name__}"
    )


def _group_up() -> bool:
    return dist.is_available() and dist.is_initialized()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass


def _leave(exc_type: type[BaseException]) -> None:
    """The end of Note [failing exit]: the steps of a normal exit that are safe, then ``os._exit``."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()  # what Python does first at exit: wait for the script's non-daemon threads
    atexit._run_exitfuncs()
    _flush()
    if issubclass(exc_type, KeyboardInterrupt):
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(1)


def _report(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, previous: ExceptHook
) -> None:
    if is_user_error(exc) and not debug_enabled():
        sys.stderr.write(one_line(exc) + "\n")
    else:
        previous(exc_type, exc, tb)


def install_exit_hook() -> None:
    """Make this module's ``sys.excepthook`` the outermost one (idempotent).

    Called before config parsing and again after ``init_process_group`` (whose own hook prefixes each
    traceback line with ``[rankN]:`` and wraps whatever hook was there): the outermost copy reports and
    exits; an inner copy reached through torch's hook only passes the error on.
    """
    previous = sys.excepthook
    if getattr(previous, "_ds_rank_exit", False):
        return

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        global _handling, failing
        if _handling:  # an inner copy: the outer one already decided how to report
            previous(exc_type, exc, tb)
            return
        _handling = failing = True
        try:
            _report(exc_type, exc, tb, previous)
        finally:
            _handling = False
            if _group_up():
                _leave(exc_type)

    hook._ds_rank_exit = True  # type: ignore[attr-defined]
    sys.excepthook = hook
