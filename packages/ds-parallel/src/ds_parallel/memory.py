"""Counting tensor memory neutrally on any device, CPU included (no allocator statistics needed).

:class:`LiveTensorBytes` is a dispatch mode that sees every tensor an operator creates while it is
active (forward and backward) and keeps, per storage, how many tensors still use it; ``peak`` is the
most bytes alive at once among the storages created inside the mode. :func:`saved_activation_bytes`
counts the distinct storages autograd saves for the backward of one forward (activation memory).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """``with LiveTensorBytes() as m: ...``; then ``m.peak`` and ``m.live`` (bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._users: dict[int, list[int]] = {}  # storage data_ptr -> [live tensors, bytes]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0:
            return
        entry = self._users.get(key)
        if entry is None:
            entry = self._users[key] = [0, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._users.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._users[key]


def peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes of tensors created by ``fn()`` and alive at once (its result is dropped)."""
    with LiveTensorBytes() as mode:
        fn()
    return mode.peak


def saved_activation_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())
