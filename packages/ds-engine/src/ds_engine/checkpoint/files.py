"""Atomic writes and safe reads of checkpoint files.

Note: [atomic writes] Every file is written to a temporary name in the destination directory, flushed
and fsync'ed, then renamed over the final name (and the directory fsync'ed), so a reader sees either
the old file or the complete new one. ``latest`` is written the same way, last, so a crash mid-save
leaves the previous checkpoint and ``latest`` untouched.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import torch


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
                raise UnsafeCheckpointValue(f"{path}: key {key!r} of type {type(key).__name__} is not plain data")
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


def _fsync_dir(directory: str) -> None:
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


def atomic_write_bytes(path: str, write: Any) -> None:
    """Create ``path`` atomically; ``write(fileobj)`` produces the content (Note [atomic writes])."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, lambda handle: handle.write(buffer.getbuffer()))


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, lambda handle: handle.write(text.encode("utf-8")))


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file holds objects that cannot be loaded without running code."""


def safe_load(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: a checkpoint cannot run code while loading."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError subclasses; name the file either way
        if "weights_only" in str(exc) or "Unpickler" in type(exc).__name__ or "Unpickling" in type(exc).__name__:
            raise UnsafeCheckpointError(
                f"{path} holds objects that cannot be loaded safely (weights_only=True): {str(exc).splitlines()[0]}"
            ) from None
        raise


CPU = torch.device("cpu")


def clone_tensors_for_torch_save(item: Any, device: torch.device | str = CPU) -> Any:
    """A copy of ``item`` whose tensors (also inside dicts, lists and tuples) are compact clones on ``device``."""
    target = torch.device(device)
    if torch.is_tensor(item):
        moved = item.detach().to(target)
        return moved.clone() if moved.data_ptr() == item.data_ptr() else moved  # same storage: make it compact
    if isinstance(item, dict):
        return type(item)((key, clone_tensors_for_torch_save(value, target)) for key, value in item.items())
    if isinstance(item, tuple) and hasattr(item, "_fields"):  # a namedtuple takes its fields positionally
        return type(item)(*(clone_tensors_for_torch_save(value, target) for value in item))
    if isinstance(item, (list, tuple)):
        return type(item)(clone_tensors_for_torch_save(value, target) for value in item)
    return item
