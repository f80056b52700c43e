"""Atomic writes and safe reads of checkpoint files: the one place the checkpoint code writes files.

Every file is written by :func:`ds_accel.atomic_files.atomic_write` (Note [atomic writes] there: a
temporary name, fsync, rename, so a reader sees either the old file or the complete new one, with mode
``0o666 & ~umask`` as ``torch.save`` gives them). ``latest`` is written the same way, last, so a crash
mid-save leaves the previous checkpoint and ``latest`` untouched. Each write returns the file's size and
CRC-32, computed from the bytes in memory while they are written (no second read), for the tag's
manifest (:mod:`.manifest`).

Note: [stale temporaries] The temporary name is ``.<name>.<random>.tmp``: a dot-file, so no reader's
glob (``*_optim_states.pt`` ...) ever matches it. A process killed mid-write leaves it behind;
:func:`remove_stale_temporaries` deletes such files at the next save of the tag, before the save's
first rendezvous, when no rank of that save can be writing yet.
"""

from __future__ import annotations

import errno
import mmap
import os
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ds_accel.atomic_files import atomic_write
from ds_engine.progress import file_progress
from ds_zero import load_errors


class UnsafeCheckpointValue(TypeError):
    """A value that ``torch.load(weights_only=True)`` could not read back was about to be saved."""


_PLAIN = (bool, int, float, str, bytes, type(None), torch.Size, torch.dtype, torch.device)


def check_safe(value: Any, path: str = "client_state") -> None:
    """Raise :class:`UnsafeCheckpointValue` naming the first value that is not a tensor or plain data."""
    if isinstance(value, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, _PLAIN):
                raise UnsafeCheckpointValue(
                    f"{path}: key {key!r} of type {type(key).__name__} is not plain data"
                )
            check_safe(item, f"{path}[{key!r}]")
        return
    if isinstance(value, list | tuple | set):
        for i, item in enumerate(value):
            check_safe(item, f"{path}[{i}]")
        return
    raise UnsafeCheckpointValue(
        f"{path} holds a {type(value).__module__}.{type(value).__qualname__}; checkpoints store only tensors "
        "and plain containers (dict, list, tuple, str, numbers) so that loading them cannot run code"
    )


@dataclass(frozen=True)
class WrittenFile:
    """A file a checkpoint save wrote: its path, size in bytes and CRC-32 (``zlib.crc32``)."""

    path: str
    size: int
    crc32: int


class _Tally:
    """A write-only view of a file that counts the bytes written and their CRC-32."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.size = 0
        self.crc32 = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._handle.write(view)
        self.size += view.nbytes
        self.crc32 = zlib.crc32(view, self.crc32)
        return view.nbytes

    def flush(self) -> None:
        self._handle.flush()


def _named_os_error(exc: OSError, path: str) -> OSError:
    """``exc`` naming the checkpoint file and the errno symbol (``ENOSPC`` for a full disk)."""
    symbol = errno.errorcode.get(exc.errno or 0, "")
    what = f"{symbol} ({exc.strerror})" if symbol else (exc.strerror or str(exc))
    return OSError(exc.errno, f"{what} while writing checkpoint file", path)


def atomic_write_bytes(path: str, write: Callable[[Any], Any]) -> WrittenFile:
    """Create ``path`` atomically; ``write(fileobj)`` produces the content (Note [atomic writes] in
    :mod:`ds_accel.atomic_files`, whose helper does the write).

    An OSError (a full disk: ``ENOSPC``) is raised again naming ``path``; no temporary file remains.
    """
    tallies: list[_Tally] = []

    def produce(handle: Any) -> None:
        tallies.append(_Tally(handle))
        write(tallies[-1])

    try:
        atomic_write(path, produce)
    except OSError as exc:
        if exc.errno is not None:
            raise _named_os_error(exc, path) from exc
        raise
    return WrittenFile(path=path, size=tallies[-1].size, crc32=tallies[-1].crc32)


def atomic_torch_save(obj: Any, path: str) -> WrittenFile:
    """``torch.save`` to ``path`` atomically; returns the file's size and CRC-32."""
    start = time.perf_counter()
    # streamed into the temporary (a failure removes it): serialising into memory first would hold a
    # second copy of everything saved, which a state offloaded to NVMe cannot afford (Note [bounded
    # checkpoint I/O] in ds_zero.nvme_swapper)
    written = atomic_write_bytes(path, lambda handle: torch.save(obj, handle))
    file_progress("saved", path, written.size, time.perf_counter() - start)
    return written


def atomic_write_text(path: str, text: str) -> WrittenFile:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, lambda handle: handle.write(text.encode("utf-8")))


def remove_stale_temporaries(directory: str, names: Iterable[str] | None = None) -> list[str]:
    """Delete the temporaries an interrupted save left in ``directory`` (Note [stale temporaries]):
    ``.<name>.*.tmp`` for each of ``names``, or every ``.*.tmp`` when ``names`` is None. Returns them."""
    prefixes = None if names is None else tuple(f".{name}." for name in names)
    removed: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(".tmp")) or not entry.is_file(follow_symlinks=False):
            continue
        if prefixes is not None and not name.startswith(prefixes):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(entry.path)
    return removed


def crc32_of_file(path: str, chunk: int = 1 << 22) -> int:
    """The CRC-32 of a file's content, read in chunks."""
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file holds objects that cannot be loaded without running code."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file is truncated, damaged (not the bytes its manifest records) or not a checkpoint."""


def safe_load(path: str, map_location: Any = "cpu", *, mapped: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``: a checkpoint cannot run code while loading.

    A file that asks to import a class or function raises :class:`UnsafeCheckpointError`; a truncated
    or foreign one :class:`CorruptCheckpointError`; both name ``path`` and never suggest loading with
    ``weights_only=False``. ``mapped``: the tensors are shared mappings of the file, which the caller
    must only read (Note [mapped optimizer files] in ds_zero.deepspeed_format says why shared).
    """
    start = time.perf_counter()
    try:
        if mapped and zipfile.is_zipfile(path):
            with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED):
                loaded = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        else:
            loaded = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files; name the file
        if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.filename is not None):
            raise  # out of memory, or a missing / unreadable file, which names itself
        if "can't allocate memory" in str(exc):  # torch's allocator: not a damaged file
            raise MemoryError(f"{path}: out of memory while reading it") from exc
        unsafe, reason = load_errors.describe(exc)
        if unsafe:
            raise UnsafeCheckpointError(
                f"{path} holds objects that cannot be loaded safely (weights_only=True): {reason}"
            ) from None
        raise CorruptCheckpointError(f"{path} is truncated or not a torch checkpoint: {reason}") from None
    size = os.path.getsize(path) if isinstance(path, (str, os.PathLike)) else 0  # or a file object
    file_progress("loaded", str(path), size, time.perf_counter() - start)
    return loaded


CPU = torch.device("cpu")


def clone_tensors_for_torch_save(item: Any, device: torch.device | str = CPU) -> Any:
    """A copy of ``item`` whose tensors (also inside dicts, lists and tuples) are compact clones on ``device``."""
    target = torch.device(device)
    if torch.is_tensor(item):
        moved = item.detach().to(target)
        return (
            moved.clone() if moved.data_ptr() == item.data_ptr() else moved
        )  # same storage: make it compact
    if isinstance(item, dict):
        return type(item)((key, clone_tensors_for_torch_save(value, target)) for key, value in item.items())
    if isinstance(item, tuple) and hasattr(item, "_fields"):  # a namedtuple takes its fields positionally
        return type(item)(*(clone_tensors_for_torch_save(value, target) for value in item))
    if isinstance(item, (list, tuple)):
        return type(item)(clone_tensors_for_torch_save(value, target) for value in item)
    return item
