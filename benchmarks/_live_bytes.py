"""A torch-only count of the peak bytes of tensors alive at once, for benchmarks that run two venvs.

The reference DeepSpeed's venv has none of this project's packages, so a benchmark that measures memory
on both sides imports this module in both and counts with the very same code. It is a dispatch mode:
every tensor an operator returns while the mode is active (forward, backward and collectives alike) is
charged to its storage the first time that storage is seen, and the storage is released when the last
tensor seen on it dies. Only storages first seen inside the mode are counted, so tensors made before it
(the model's parameters, the batch) are not; the gradients created inside it are. The figure depends
on no allocator, so it is the same on CPU and GPU and is not disturbed by machine load.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakLiveBytes(TorchDispatchMode):
    """``with PeakLiveBytes() as counter: ...``; then ``counter.peak`` is the most bytes alive at once."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.peak = 0
        # storage address -> (tensors seen on it and still alive, its size in bytes)
        self._storages: dict[int, tuple[int, int]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(result):
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta":
                self._charge(leaf)
        return result

    def _charge(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        size = storage.nbytes()
        if size == 0:
            return
        address = storage.data_ptr()
        users, known = self._storages.get(address, (0, 0))
        if users == 0:
            known = size
            self.now += size
            self.peak = max(self.peak, self.now)
        self._storages[address] = (users + 1, known)
        # Python tensor objects outlive their Python references while autograd (or any C++ owner) still
        # holds the tensor, so the finalizer fires only when the storage's user is really gone.
        weakref.finalize(tensor, self._drop, address)

    def _drop(self, address: int) -> None:
        users, size = self._storages.get(address, (0, 0))
        if users <= 1:
            if users == 1:
                self.now -= size
            self._storages.pop(address, None)
        else:
            self._storages[address] = (users - 1, size)
