"""Checking, grouping and indexing the tensor lists that one multi-tensor step updates.

A multi-tensor step sees parallel lists (params, grads, states, optional low-precision outputs).
This module checks them (lengths, sizes, devices, layouts), splits them into launch groups that
share a device and a dtype signature, and builds the two small device tables a multi-tensor Triton
launch reads:

* a *pointer table*, int64 ``[T, C + 1]``: for each tensor its ``C`` data pointers and its numel;
* a *chunk map*, int32 ``[P, 2]``: for each program the tensor index and the block index in it.

Note [table caching]: the chunk map depends only on the tensor sizes and the block size, and the
pointer table only on the data pointers and sizes, so both are cached under exactly those keys.
Parameters and optimizer states never move, and PyTorch's caching allocator usually hands
gradients the same addresses each step, so a training loop builds them once; when a gradient does
move, its key changes and a fresh table is built (a few KB copied to the device).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .backend import UnsupportedKernelInput

__all__ = ["LaunchGroup", "chunk_map", "group_rows", "pointer_table", "validate_lists"]

_CACHE_LIMIT = 64


@dataclass(frozen=True)
class LaunchGroup:
    """Rows (tensor indices) that one launch updates: same device, same dtype per role."""

    device: torch.device
    dtypes: tuple[torch.dtype | None, ...]
    rows: tuple[int, ...]


def required(columns: dict[str, list[torch.Tensor] | None], role: str) -> list[torch.Tensor]:
    """The list of ``role`` from :func:`validate_lists`' result, for a role the caller always passes."""
    found = columns[role]
    if found is None:
        raise ValueError(f"the tensor list '{role}' is required")
    return found


def validate_lists(
    op: str, columns: dict[str, Sequence[torch.Tensor] | None], *, read_only: frozenset[str]
) -> dict[str, list[torch.Tensor] | None]:
    """Check parallel tensor lists and return them as lists.

    ``columns`` maps a role name (``"params"``, ``"grads"``, ...) to its list, or None for an absent
    optional role. Roles in ``read_only`` may be non-contiguous (a contiguous copy is used); every
    other role is written in place and must be contiguous. Raises ValueError /
    :class:`UnsupportedKernelInput` naming the role and index.

    The checks run as whole-list comparisons (this runs on every step, for hundreds of tensors);
    only a failing list is walked to name the offending index.
    """
    present = {role: list(ts) for role, ts in columns.items() if ts is not None}
    lengths = {role: len(ts) for role, ts in present.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{op}: the tensor lists differ in length: {lengths}")
    first_role, anchor = next(iter(present.items()))
    for role, ts in present.items():
        if not all(isinstance(t, torch.Tensor) for t in ts):
            i = next(i for i, t in enumerate(ts) if not isinstance(t, torch.Tensor))
            raise TypeError(f"{op}: {role}[{i}] is {type(ts[i]).__name__}, expected a torch.Tensor")
        if any(t.is_sparse for t in ts):
            i = next(i for i, t in enumerate(ts) if t.is_sparse)
            raise UnsupportedKernelInput(f"{op}: {role}[{i}] is sparse; fused steps take dense tensors")
    numels = [t.numel() for t in anchor]
    devices = [t.device for t in anchor]
    for role, ts in present.items():
        if role != first_role and [t.numel() for t in ts] != numels:
            i = next(i for i, t in enumerate(ts) if t.numel() != numels[i])
            raise ValueError(
                f"{op}: {role}[{i}] has {ts[i].numel()} elements but {first_role}[{i}] has {numels[i]}"
            )
        if role != first_role and [t.device for t in ts] != devices:
            i = next(i for i, t in enumerate(ts) if t.device != devices[i])
            raise ValueError(
                f"{op}: {role}[{i}] is on {ts[i].device} but {first_role}[{i}] is on {devices[i]}"
            )
        if all(t.is_contiguous() for t in ts):
            continue
        for i, t in enumerate(ts):
            if t.is_contiguous():
                continue
            if role not in read_only:
                raise UnsupportedKernelInput(
                    f"{op}: {role}[{i}] (shape {tuple(t.shape)}) is not contiguous; the step writes it in "
                    "place, so pass a contiguous tensor"
                )
            ts[i] = t.contiguous()
    return {role: present.get(role) for role in columns}


def group_rows(columns: Sequence[Sequence[torch.Tensor] | None]) -> list[LaunchGroup]:
    """Split rows into launch groups by (device, dtype of each column); empty tensors are dropped."""
    anchor = next(c for c in columns if c is not None)
    dtype_columns = [[None] * len(anchor) if c is None else [t.dtype for t in c] for c in columns]
    groups: dict[tuple, list[int]] = {}
    for i, (t, *dtypes) in enumerate(zip(anchor, *dtype_columns)):
        if t.numel() == 0:
            continue
        key = (t.device, tuple(dtypes))
        rows = groups.get(key)
        if rows is None:
            rows = groups[key] = []
        rows.append(i)
    return [LaunchGroup(device, dtypes, tuple(rows)) for (device, dtypes), rows in groups.items()]


class _LRU(OrderedDict):
    def get_or_build(self, key, build):
        value = self.get(key)
        if value is None:
            value = build()
            self[key] = value
            while len(self) > _CACHE_LIMIT:
                self.popitem(last=False)
        else:
            self.move_to_end(key)
        return value


_pointer_tables = _LRU()
_chunk_maps = _LRU()


def pointer_table(
    columns: Sequence[Sequence[torch.Tensor] | None], rows: Sequence[int], device: torch.device
) -> tuple[torch.Tensor, bool]:
    """int64 ``[len(rows), len(columns) + 1]`` of data pointers (0 for an absent column) and numels,
    and whether every pointer is 16-byte aligned (which lets full blocks use 16-byte accesses).

    Cached by pointers and sizes (Note [table caching]).
    """
    width = len(columns) + 1
    per_column = [[0] * len(rows) if col is None else [col[i].data_ptr() for i in rows] for col in columns]
    sizes = columns[0]
    assert sizes is not None  # column 0 is the parameters, always present
    per_column.append([sizes[i].numel() for i in rows])
    key = (device, width, *map(tuple, per_column))

    def build() -> tuple[torch.Tensor, bool]:
        host = torch.tensor(per_column, dtype=torch.int64).t().contiguous()
        aligned = bool((host[:, :-1] % 16 == 0).all())
        return _to_device(host, device), aligned

    return _pointer_tables.get_or_build(key, build)


def chunk_map(numels: Sequence[int], block: int, device: torch.device) -> torch.Tensor:
    """int32 ``[P, 2]``: (tensor index, block index) of each of the ``P`` programs.

    Cached by sizes and block size (Note [table caching]).
    """
    key = (device, block, tuple(numels))

    def build() -> torch.Tensor:
        blocks = torch.tensor([(n + block - 1) // block for n in numels], dtype=torch.int64)
        total = int(blocks.sum())
        if total >= 2**31:
            raise ValueError(f"{total} blocks of {block} elements exceed one launch; use a larger block")
        tensor_ids = torch.repeat_interleave(torch.arange(len(numels)), blocks)
        first = torch.cumsum(blocks, 0) - blocks
        block_ids = torch.arange(total) - torch.repeat_interleave(first, blocks)
        host = torch.stack([tensor_ids, block_ids], dim=1).to(torch.int32).contiguous()
        return _to_device(host, device)

    return _chunk_maps.get_or_build(key, build)


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return host
    if device.type == "cuda":
        # Pinned + non_blocking: the copy does not wait for the kernels already queued.
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
