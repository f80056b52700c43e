"""Relay a child's output pipes as whole lines, and remember its last lines for failure reports."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

_CHUNK = 65536


class OutputRelay:
    """Copies one process's stdout/stderr to sinks, whole lines at a time.

    Writing whole lines keeps the lines of different ranks from interleaving mid-line; a line longer
    than 64 KiB is passed on in pieces rather than held back. Every line is also kept in a short tail
    and offered to ``on_line`` (used to spot remote failures in a runner's output).
    """

    def __init__(self, *, tail_lines: int = 20, on_line: Callable[[str], None] | None = None) -> None:
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self._on_line = on_line
        self._streams: dict[int, tuple[IO[bytes], BinaryIO]] = {}
        self._partial: dict[int, bytes] = {}

    def attach(self, stream: IO[bytes], sink: BinaryIO) -> int:
        """Start relaying ``stream`` (made non-blocking) to ``sink``; return its file descriptor."""
        fd = stream.fileno()
        os.set_blocking(fd, False)
        self._streams[fd] = (stream, sink)
        self._partial[fd] = b""
        return fd

    @property
    def open_fds(self) -> list[int]:
        return list(self._streams)

    def read(self, fd: int) -> bool:
        """Relay what ``fd`` has now; return False once it reached end of file (and was closed)."""
        try:
            data = os.read(fd, _CHUNK)
        except BlockingIOError:
            return True
        if not data:
            self._close(fd)
            return False
        self._partial[fd] += data
        self._emit(fd, final=False)
        return True

    def drain(self) -> list[int]:
        """Relay everything readable right now from every stream; return the fds that reached EOF."""
        closed = []
        for fd in self.open_fds:
            while True:
                try:
                    data = os.read(fd, _CHUNK)
                except BlockingIOError:
                    break
                if not data:
                    self._close(fd)
                    closed.append(fd)
                    break
                self._partial[fd] += data
                self._emit(fd, final=False)
        return closed

    def close_all(self) -> list[int]:
        """Flush partial lines and close every stream; return the fds closed."""
        fds = self.open_fds
        for fd in fds:
            self._close(fd)
        return fds

    def _close(self, fd: int) -> None:
        self._emit(fd, final=True)
        stream, _ = self._streams.pop(fd)
        stream.close()

    def _emit(self, fd: int, *, final: bool) -> None:
        buffer = self._partial[fd]
        cut = len(buffer) if final or len(buffer) > _CHUNK else buffer.rfind(b"\n") + 1
        if cut <= 0:
            return
        chunk, self._partial[fd] = buffer[:cut], buffer[cut:]
        sink = self._streams[fd][1]
        sink.write(chunk)
        sink.flush()
        for raw in chunk.splitlines():
            line = raw.decode("utf-8", "replace")
            self.tail.append(line)
            if self._on_line is not None:
                self._on_line(line)


def read_log_tail(path: Path, lines: int) -> tuple[str, ...]:
    """The last ``lines`` lines of a log file (read from its last 64 KiB)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _CHUNK))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ()
    return tuple(text.splitlines()[-lines:])
