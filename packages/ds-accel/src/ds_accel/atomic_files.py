"""Atomic file writes: the one write-temporary, fsync, rename helper every package uses.

Note: [atomic writes] A file is written to a temporary name in the destination directory, flushed and
fsync'ed, then renamed over the final name (and the directory fsync'ed), so a reader sees either the old
file or the complete new one, also after a crash. The temporary is ``.<name>.<random>.tmp``: a dot-file
that no reader's glob matches, removed again when the write fails. Files get ``0o666 & ~umask``, the
mode ``open()`` (and ``torch.save``) would give them, unless the caller asks for another.

It lives in ds-accel, torch-free, because the launcher (hostfiles, the pid file, autotuning results),
ds-zero (``zero_to_fp32``) and ds-engine (checkpoints) all write files this way, and ds-accel is the one
package all of them depend on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any

StrPath = str | os.PathLike[str]


@functools.lru_cache(maxsize=1)
def process_umask() -> int:
    """The process umask, read once. ``os.umask`` can only be read by setting it, which races with other
    threads creating files, so Linux's ``/proc/self/status`` is read instead where it exists."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(directory: StrPath) -> None:
    """Make a rename in ``directory`` durable (best effort: some filesystems refuse a directory fsync)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary(path: StrPath) -> tuple[str, str, int]:
    """(directory, temporary path, open descriptor) next to ``path`` (Note [atomic writes])."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    return directory, tmp, fd


def _seal(handle: IO[bytes], mode: int | None) -> None:
    """Give the temporary its final mode (mkstemp made it 0600) and flush it to disk."""
    os.fchmod(handle.fileno(), 0o666 & ~process_umask() if mode is None else mode)
    os.fsync(handle.fileno())


def _publish(tmp: str, path: StrPath, directory: str, fill: Callable[[], None]) -> None:
    """Run ``fill`` (which writes and seals ``tmp``), then rename ``tmp`` over ``path`` durably; on any
    error the temporary is removed and ``path`` is untouched."""
    try:
        fill()
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: StrPath, write: Callable[[IO[bytes]], Any], *, mode: int | None = None) -> None:
    """Create or replace ``path`` atomically; ``write(handle)`` writes the content to a binary file.

    ``mode`` defaults to ``0o666 & ~umask``. On any error no temporary remains and ``path`` is untouched.
    """
    directory, tmp, fd = _temporary(path)

    def fill() -> None:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            _seal(handle, mode)

    _publish(tmp, path, directory, fill)


def atomic_write_to_path(path: StrPath, write: Callable[[str], Any], *, mode: int | None = None) -> None:
    """Like :func:`atomic_write`, for writers that take a file name (``safetensors``' ``save_file``):
    ``write(temporary_path)`` creates the content, which is then fsync'ed and renamed over ``path``."""
    directory, tmp, fd = _temporary(path)
    os.close(fd)

    def fill() -> None:
        write(tmp)
        with open(tmp, "rb+") as handle:
            _seal(handle, mode)

    _publish(tmp, path, directory, fill)


def atomic_write_text(path: StrPath, text: str, *, mode: int | None = None) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data), mode=mode)


def atomic_write_json(path: StrPath, payload: Any, **dumps: Any) -> None:
    """Write ``payload`` as JSON (and a final newline) to ``path`` atomically; ``dumps`` go to ``json.dumps``."""
    atomic_write_text(path, json.dumps(payload, **dumps) + "\n")
