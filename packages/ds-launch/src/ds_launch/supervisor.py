"""Start a set of processes, relay their output, and end them all together.

Note [one failure ends the job]: each child runs in its own session (so its whole process tree shares
one process group that ``killpg`` reaches) and gets SIGKILL if the supervising thread dies
(``PR_SET_PDEATHSIG``). When a child exits non-zero, or a remote failure is reported in a child's
output, or the supervisor receives SIGINT/SIGTERM/SIGHUP, every other child's group gets the stop
signal, then SIGKILL after ``grace_s``. When the job ends, every group is sent SIGKILL so no
grandchild outlives it.

Nothing sleeps: the loop blocks in ``select`` on the children's pipes and on a wake-up pipe that the
signal handlers (SIGCHLD included) write to, with a timeout only as a safety net.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ds_launch.relay import OutputRelay, read_log_tail

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1

FailureProbe = Callable[[str], "tuple[str, int] | None"]


@dataclass(frozen=True)
class ProcessSpec:
    """One process to supervise.

    Attributes:
        name: how messages name it, e.g. ``"rank 1 (local rank 1) on node localhost"``.
        argv: the command, as an argument list (never a shell string).
        env: its complete environment.
        log_path: when set, stdout and stderr go to this file instead of being relayed.
        cpu_affinity: cores the process (and its children) may run on.
        stop_argv: a command run before signalling, to stop work this process started elsewhere
            (e.g. remote node launchers behind pdsh).
        failure_probe: maps an output line to ``(who, exit code)`` when the line reports a failure
            of something this process runs remotely.
    """

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    log_path: Path | None = None
    cpu_affinity: tuple[int, ...] | None = None
    stop_argv: tuple[str, ...] | None = None
    failure_probe: FailureProbe | None = None


@dataclass(frozen=True)
class Failure:
    """The first failure of a job: who, with which exit code, and the last lines it printed.

    ``relayed`` says whether those lines already reached the console (False when they went to a
    per-rank log file, or were never printed).
    """

    name: str
    exit_code: int
    tail: tuple[str, ...]
    relayed: bool = True


@dataclass(frozen=True)
class RunResult:
    """How a supervised job ended: the exit code to report, and why."""

    exit_code: int
    failure: Failure | None = None
    signal: int | None = None


def exit_code_of(returncode: int) -> int:
    """A shell-style exit code: a death by signal N becomes 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


# An exception's last line ("ValueError: ...", "torch.OutOfMemoryError: ...") or a CLI's "error:" line.
_ERROR_LINE = re.compile(r"\b\w*(Error|Exception|Interrupt)\b(:|$)|\berror:")
# The rank label of a line: torch's "[rankN]: " or ours "[rankN] " (the report names the rank itself).
_WHO = re.compile(r"^\[rank\d+\]:? ")
# A nested launcher's own report ("[deepspeed] rank 1 ... exited with code 3: ValueError: ...").
_NESTED = re.compile(r"exited with code \d+: (.*)$")


def error_line(tail: tuple[str, ...] | list[str]) -> str:
    """The line of ``tail`` that names the error: the last exception-like line, else the last line."""
    lines = [line.strip() for line in tail if line.strip()]
    for line in reversed(lines):
        nested = _NESTED.search(line)
        if nested:
            return nested.group(1)
        if _ERROR_LINE.search(line):
            return _WHO.sub("", line, count=1)
    return _WHO.sub("", lines[-1], count=1) if lines else ""


def format_failure(failure: Failure, *, prefix: str = "[deepspeed]") -> str:
    """The report printed when a job fails, ending with one line: who failed, the exit code, the error.

    Note [one report per error]: the failing rank's output was already relayed to the console, so the
    report repeats only its error line, never its traceback. Lines that did not reach the console
    (a per-rank log file) are shown first, then the same closing line.
    """
    head = f"{prefix} {failure.name} exited with code {failure.exit_code}"
    if not failure.tail:
        return head + " (no output)\n"
    lines = []
    if not failure.relayed and len(failure.tail) > 1:
        lines.append(f"{prefix} last {len(failure.tail)} line(s) of the output of {failure.name}:")
        lines += [f"{prefix}   | {line}" for line in failure.tail]
    lines.append(f"{head}: {error_line(failure.tail)}")
    return "\n".join(lines) + "\n"


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _preexec(parent_pid: int, affinity: tuple[int, ...] | None, prctl: Callable[..., int] | None):
    """Runs in the child between fork and exec (the supervisor itself starts no threads)."""

    def setup() -> None:
        os.setsid()
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)
        if affinity:
            os.sched_setaffinity(0, affinity)

    return setup


def _killpg(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def run_stop_command(argv: tuple[str, ...], *, env: Mapping[str, str], timeout: float) -> None:
    """Run a stop command for at most ``timeout`` seconds, then end it with everything it started.

    It runs in a session of its own because a stop command such as ``pdsh ... pkill`` starts one
    ssh per host: one whose host is unreachable must not outlive the launcher (killing pdsh alone
    would leave it behind).
    """
    try:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    _killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class _Child:
    spec: ProcessSpec
    popen: subprocess.Popen
    relay: OutputRelay = field(init=False)
    returncode: int | None = None


class Supervisor:
    """Runs :class:`ProcessSpec` s to completion under Note [one failure ends the job]."""

    def __init__(
        self,
        *,
        grace_s: float = 3.0,
        tail_lines: int = 20,
        stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
        safety_poll_s: float = 0.5,
    ) -> None:
        self.grace_s = grace_s
        self.tail_lines = tail_lines
        self._out = stdout if stdout is not None else sys.stdout.buffer
        self._err = stderr if stderr is not None else sys.stderr.buffer
        self._safety_poll_s = safety_poll_s
        self._children: list[_Child] = []
        self._selector = selectors.DefaultSelector()
        self._failure: Failure | None = None
        self._signal: int | None = None
        self._kill_at: float | None = None
        self._killed = False

    def run(self, specs: list[ProcessSpec]) -> RunResult:
        """Start every spec, supervise until all have exited, and say how the job ended."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        restore = self._install_signals(wake_w)
        self._selector.register(wake_r, selectors.EVENT_READ, None)
        try:
            self._start_all(specs)
            self._loop(wake_r)
        finally:
            self._kill_groups(signal.SIGKILL)
            for child in self._children:
                if child.returncode is None:
                    child.returncode = child.popen.wait()
            restore()
            self._selector.close()
            os.close(wake_r)
            os.close(wake_w)
        return self._result()

    # -- starting ---------------------------------------------------------------------------------
    def _start_all(self, specs: list[ProcessSpec]) -> None:
        prctl = _libc_prctl()
        for spec in specs:
            try:
                self._children.append(self._start(spec, prctl))
            except OSError as err:
                code = 127 if isinstance(err, FileNotFoundError) else 126
                self._failure = Failure(
                    spec.name, code, (f"cannot start {spec.argv[0]!r}: {err.strerror}",), relayed=False
                )
                self._begin_stop(signal.SIGTERM)
                return

    def _start(self, spec: ProcessSpec, prctl: Callable[..., int] | None) -> _Child:
        log = open(spec.log_path, "wb") if spec.log_path is not None else None  # noqa: SIM115
        try:
            popen = subprocess.Popen(
                list(spec.argv),
                env=dict(spec.env),
                stdout=log if log is not None else subprocess.PIPE,
                stderr=log if log is not None else subprocess.PIPE,
                preexec_fn=_preexec(os.getpid(), spec.cpu_affinity, prctl),
            )
        finally:
            if log is not None:
                log.close()
        child = _Child(spec=spec, popen=popen)
        on_line = (lambda line: self._probe(child, line)) if spec.failure_probe is not None else None
        child.relay = OutputRelay(tail_lines=self.tail_lines, on_line=on_line)
        for stream, sink in ((popen.stdout, self._out), (popen.stderr, self._err)):
            if stream is not None:
                self._selector.register(child.relay.attach(stream, sink), selectors.EVENT_READ, child)
        return child

    # -- the loop ---------------------------------------------------------------------------------
    def _loop(self, wake_r: int) -> None:
        drain_until: float | None = None
        while True:
            self._reap()
            if all(c.returncode is not None for c in self._children):
                if len(self._selector.get_map()) == 1:  # only the wake-up pipe is left
                    return
                # A grandchild may hold a pipe open after its parent exited: end the groups, and
                # give the pipes a moment to deliver what was written before closing them.
                self._kill_groups(signal.SIGKILL)
                drain_until = drain_until or time.monotonic() + 1.0
                if time.monotonic() >= drain_until:
                    for child in self._children:
                        self._unregister(child.relay.close_all())
                    return
            self._escalate()
            for key, _ in self._selector.select(self._timeout(drain_until)):
                if key.data is None:
                    self._take_signals(wake_r)
                elif not key.data.relay.read(key.fd):
                    self._selector.unregister(key.fd)

    def _timeout(self, drain_until: float | None) -> float:
        timeout = self._safety_poll_s
        for deadline in (None if self._killed else self._kill_at, drain_until):
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        return timeout

    def _reap(self) -> None:
        for child in self._children:
            if child.returncode is not None:
                continue
            returncode = child.popen.poll()
            if returncode is None:
                continue
            child.returncode = returncode
            if returncode != 0 and self._kill_at is None:
                self._unregister(child.relay.drain())  # the tail must include its last words
                log = child.spec.log_path
                tail = read_log_tail(log, self.tail_lines) if log is not None else tuple(child.relay.tail)
                self._failure = Failure(child.spec.name, exit_code_of(returncode), tail, relayed=log is None)
                self._begin_stop(signal.SIGTERM)

    def _unregister(self, fds: list[int]) -> None:
        for fd in fds:
            self._selector.unregister(fd)

    def _probe(self, child: _Child, line: str) -> None:
        found = child.spec.failure_probe(line) if child.spec.failure_probe else None
        if found is None or found[1] == 0 or self._kill_at is not None:
            return
        who, code = found
        tail = tuple(t for t in child.relay.tail if t.startswith(f"{who}: ")) or tuple(child.relay.tail)
        self._failure = Failure(f"node {who}", code, tail)
        self._begin_stop(signal.SIGTERM)

    # -- stopping ---------------------------------------------------------------------------------
    def _take_signals(self, wake_r: int) -> None:
        try:
            data = os.read(wake_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in STOP_SIGNALS and self._kill_at is None:
                self._signal = signum
                self._begin_stop(signal.Signals(signum))

    def _begin_stop(self, signum: signal.Signals) -> None:
        if self._kill_at is not None:
            return
        self._kill_at = time.monotonic() + self.grace_s
        alive = [c for c in self._children if c.returncode is None]
        for child in alive:
            if child.spec.stop_argv:
                run_stop_command(child.spec.stop_argv, env=child.spec.env, timeout=self.grace_s)
        for child in alive:
            _killpg(child.popen.pid, signum)

    def _escalate(self) -> None:
        if self._kill_at is not None and not self._killed and time.monotonic() >= self._kill_at:
            self._killed = True
            self._kill_groups(signal.SIGKILL)

    def _kill_groups(self, signum: signal.Signals) -> None:
        for child in self._children:
            _killpg(child.popen.pid, signum)

    # -- signals & result -------------------------------------------------------------------------
    def _install_signals(self, wake_w: int) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # handlers only work in the main thread; the safety poll still runs
        previous_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        previous = {sig: signal.signal(sig, _note_signal) for sig in (*STOP_SIGNALS, signal.SIGCHLD)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)

        return restore

    def _result(self) -> RunResult:
        if self._failure is not None:
            return RunResult(self._failure.exit_code, failure=self._failure)
        if self._signal is not None:
            return RunResult(128 + self._signal, signal=self._signal)
        return RunResult(max((exit_code_of(c.returncode or 0) for c in self._children), default=0))


def _note_signal(signum: int, frame: object) -> None:
    """The wake-up fd already carries the signal number; the handler only has to exist."""
