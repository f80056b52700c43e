"""The process supervisor on real processes: relaying output, failures, signals, no survivors."""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import pytest
from _launch_util import make_ready_fifo, read_pids, wait_gone

from ds_launch.supervisor import Failure, ProcessSpec, Supervisor, error_line, exit_code_of, format_failure

PY = sys.executable
WAIT_FOREVER = "import signal; signal.pause()"


def spec(name: str, code: str, *, env: dict | None = None, **kwargs) -> ProcessSpec:
    return ProcessSpec(name=name, argv=(PY, "-c", code), env=dict(os.environ, **(env or {})), **kwargs)


def waiter(out: Path, tag: str, *, ignore_term: bool = False, with_child: bool = False) -> str:
    """Code for a process that records its pid (and a child's), reports ready, then waits forever."""
    lines = ["import os, signal, subprocess, sys"]
    if ignore_term:
        lines.append("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    if with_child:
        lines.append(f"c = subprocess.Popen([sys.executable, '-c', {WAIT_FOREVER!r}])")
        lines.append(f"open(os.path.join({str(out)!r}, 'pid.{tag}.child'), 'w').write(str(c.pid))")
    lines.append(f"open(os.path.join({str(out)!r}, 'pid.{tag}'), 'w').write(str(os.getpid()))")
    lines.append(f"os.write(os.open({str(out / 'ready.fifo')!r}, os.O_WRONLY), b'x')")
    lines.append("signal.pause()")
    return "\n".join(lines)


def fail_after_ready(out: Path, peers: int, code: int) -> str:
    return "\n".join(
        [
            "import os, sys",
            f"fd = os.open({str(out / 'ready.fifo')!r}, os.O_RDWR)",
            "got = 0",
            f"while got < {peers}: got += len(os.read(fd, 8))",
            "print('line one'); print('line two', file=sys.stderr); sys.stdout.flush()",
            f"sys.exit({code})",
        ]
    )


@pytest.mark.timeout(60)
def test_relays_whole_lines_and_succeeds():
    out, err = io.BytesIO(), io.BytesIO()
    code = "import sys\nfor i in range(200): print('x' * 50, i)\nprint('to stderr', file=sys.stderr)"
    result = Supervisor(stdout=out, stderr=err).run([spec("a", code), spec("b", code)])
    assert result.exit_code == 0 and result.failure is None
    lines = out.getvalue().decode().splitlines()
    assert len(lines) == 400 and all(line.startswith("x" * 50 + " ") for line in lines)
    assert err.getvalue().decode().splitlines() == ["to stderr", "to stderr"]


@pytest.mark.timeout(60)
def test_failure_stops_the_others_and_reports_the_tail(tmp_path):
    make_ready_fifo(tmp_path)
    sink = io.BytesIO()
    specs = [
        spec("rank 0", waiter(tmp_path, "0")),
        spec("rank 1", fail_after_ready(tmp_path, 2, 3)),
        spec("rank 2", waiter(tmp_path, "2")),
    ]
    result = Supervisor(stdout=sink, stderr=sink, grace_s=2).run(specs)
    assert result.exit_code == 3
    assert result.failure is not None and result.failure.name == "rank 1" and result.failure.exit_code == 3
    assert set(result.failure.tail) == {"line one", "line two"}  # stdout and stderr, both drained
    pids = read_pids(tmp_path)
    assert len(pids) == 2 and wait_gone(pids, timeout=5) == []


@pytest.mark.timeout(60)
def test_hanging_tree_that_ignores_sigterm_is_killed(tmp_path):
    make_ready_fifo(tmp_path)
    sink = io.BytesIO()
    hang = spec("rank 0", waiter(tmp_path, "0", ignore_term=True, with_child=True))
    crash = spec("rank 1", fail_after_ready(tmp_path, 1, 5))
    result = Supervisor(stdout=sink, stderr=sink, grace_s=0.5).run([hang, crash])
    assert result.exit_code == 5 and result.failure.name == "rank 1"
    pids = read_pids(tmp_path)
    assert len(pids) == 2  # the rank and its child
    assert wait_gone(pids, timeout=5) == []


@pytest.mark.timeout(60)
def test_sigterm_to_the_supervisor_ends_every_process(tmp_path):
    make_ready_fifo(tmp_path)
    sink = io.BytesIO()
    killer = "\n".join(
        [
            "import os, signal",
            f"fd = os.open({str(tmp_path / 'ready.fifo')!r}, os.O_RDWR)",
            "got = 0",
            "while got < 2: got += len(os.read(fd, 8))",
            "os.kill(os.getppid(), signal.SIGTERM)",
            "signal.pause()",
        ]
    )
    specs = [
        spec("rank 0", waiter(tmp_path, "0", with_child=True)),
        spec("rank 1", waiter(tmp_path, "1")),
        spec("killer", killer),
    ]
    previous = signal.getsignal(signal.SIGTERM)
    result = Supervisor(stdout=sink, stderr=sink, grace_s=2).run(specs)
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers are restored
    assert result.exit_code == 128 + signal.SIGTERM and result.signal == signal.SIGTERM
    assert result.failure is None
    assert wait_gone(read_pids(tmp_path), timeout=5) == []


@pytest.mark.timeout(60)
def test_log_files_and_tail_from_the_log(tmp_path):
    log = tmp_path / "rank0.log"
    sink = io.BytesIO()
    code = "import sys\nfor i in range(30): print('log line', i)\nprint('bad', file=sys.stderr)\nsys.exit(4)"
    result = Supervisor(stdout=sink, stderr=sink, tail_lines=3).run([spec("rank 0", code, log_path=log)])
    assert sink.getvalue() == b""
    assert log.read_text().splitlines()[0] == "log line 0"
    assert result.failure is not None and result.failure.tail == ("log line 28", "log line 29", "bad")


@pytest.mark.timeout(60)
def test_cpu_affinity_is_applied(tmp_path):
    core = sorted(os.sched_getaffinity(0))[-1]
    out = io.BytesIO()
    code = "import os; print(sorted(os.sched_getaffinity(0)))"
    Supervisor(stdout=out).run([spec("r", code, cpu_affinity=(core,))])
    assert out.getvalue().decode().strip() == f"[{core}]"


@pytest.mark.timeout(60)
def test_a_command_that_cannot_start_is_a_failure(tmp_path):
    make_ready_fifo(tmp_path)
    bad = ProcessSpec(name="rank 1", argv=(str(tmp_path / "no-such-binary"),), env=dict(os.environ))
    result = Supervisor(stderr=io.BytesIO(), stdout=io.BytesIO(), grace_s=1).run(
        [spec("rank 0", WAIT_FOREVER), bad]
    )
    assert result.exit_code == 127 and "cannot start" in result.failure.tail[0]


@pytest.mark.timeout(60)
def test_remote_failure_line_triggers_the_stop_command(tmp_path):
    marker = tmp_path / "stopped"
    probe_line = (
        "print('pdsh@vm: worker-1: sh exited with exit code 6', flush=True)\nimport signal; signal.pause()"
    )
    remote = spec(
        "pdsh job",
        probe_line,
        stop_argv=(PY, "-c", f"open({str(marker)!r}, 'w').write('yes')"),
        failure_probe=lambda line: ("worker-1", 6) if "exited with exit code 6" in line else None,
    )
    result = Supervisor(stdout=io.BytesIO(), stderr=io.BytesIO(), grace_s=1).run([remote])
    assert result.exit_code == 6 and result.failure.name == "node worker-1"
    assert marker.read_text() == "yes"


@pytest.mark.timeout(60)
def test_a_stop_command_that_hangs_is_ended_with_what_it_started(tmp_path):
    """Like pdsh's ssh to an unreachable host: the stop command's own children must not outlive it."""
    hanging_stop = "\n".join(
        [
            "import os, subprocess, sys",
            f"c = subprocess.Popen([sys.executable, '-c', {WAIT_FOREVER!r}])",
            f"open(os.path.join({str(tmp_path)!r}, 'pid.stop.child'), 'w').write(str(c.pid))",
            "c.wait()",
        ]
    )
    remote = spec(
        "pdsh job",
        "print('pdsh@vm: worker-1: ssh exited with exit code 255', flush=True)\nimport signal; signal.pause()",
        stop_argv=(PY, "-c", hanging_stop),
        failure_probe=lambda line: ("worker-1", 255) if "exit code 255" in line else None,
    )
    result = Supervisor(stdout=io.BytesIO(), stderr=io.BytesIO(), grace_s=1).run([remote])
    assert result.exit_code == 255
    assert wait_gone(read_pids(tmp_path), 10) == []


def test_exit_codes_and_failure_format():
    assert exit_code_of(-9) == 137 and exit_code_of(2) == 2
    tail = (
        "[rank1]: Traceback (most recent call last):",
        '[rank1]:   File "t.py", line 1',
        "[rank1]: ValueError: boom",
    )
    # Relayed output is not repeated: one line naming who failed, the code and the error (Note [one report per error]).
    text = format_failure(Failure("rank 1 (local rank 1) on node localhost", 3, tail))
    assert (
        text == "[deepspeed] rank 1 (local rank 1) on node localhost exited with code 3: ValueError: boom\n"
    )
    # Output that went to a log file is shown, and the closing line is still last.
    lines = format_failure(Failure("rank 1", 3, tail, relayed=False)).splitlines()
    assert lines[0] == "[deepspeed] last 3 line(s) of the output of rank 1:"
    assert lines[1:4] == [f"[deepspeed]   | {line}" for line in tail]
    assert lines[-1] == "[deepspeed] rank 1 exited with code 3: ValueError: boom"
    assert format_failure(Failure("x", 1, ())) == "[deepspeed] x exited with code 1 (no output)\n"


@pytest.mark.parametrize(
    ("tail", "line"),
    [
        (("Traceback (most recent call last):", "  File ...", "KeyError: 'x'", ""), "KeyError: 'x'"),
        (("[rank0] DeepSpeedConfigError: 'lr': bad",), "DeepSpeedConfigError: 'lr': bad"),
        (("ValueError: boom", "terminate called without an active exception"), "ValueError: boom"),
        (("just output", "last words"), "last words"),
        (
            (
                "worker-1: [rank1]: ValueError: boom",
                "worker-1: [deepspeed] rank 1 (local rank 0) on node worker-1 exited with code 1: ValueError: boom",
            ),
            "ValueError: boom",
        ),
        (("deepspeed: error: --include: bad",), "deepspeed: error: --include: bad"),
    ],
)
def test_error_line_names_the_error(tail, line):
    assert error_line(tail) == line
