"""Activations and gradients between adjacent stages: a small header (shapes, dtypes), then the tensors.

Sends are asynchronous (``isend``; the caller waits on them at the end of a batch) and receives block, so
a schedule whose receives follow a valid dependency order cannot deadlock on send buffering.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
]
HEADER = 64  # int64 slots: count, then (dtype, ndim, dims...) per tensor


def as_tuple(x: Any) -> tuple[torch.Tensor, ...]:
    """A stage's output as a tuple of tensors."""
    if isinstance(x, torch.Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in x):
        return tuple(x)
    raise TypeError(
        f"a pipeline stage must pass a tensor or a tuple of tensors to the next stage, got {type(x)}"
    )


def _header(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    vals = [len(tensors)]
    for t in tensors:
        vals += [_DTYPES.index(t.dtype), t.dim(), *t.shape]
    if len(vals) > HEADER:
        raise ValueError("too many or too high-dimensional tensors between pipeline stages")
    return torch.tensor(vals + [0] * (HEADER - len(vals)), dtype=torch.int64)


def send(tensors: tuple[torch.Tensor, ...], dst: int, works: list[Any]) -> None:
    """Send ``tensors`` (with their header) to global rank ``dst`` without waiting."""
    header = _header(tensors)
    works.append((dist.isend(header, dst), header))
    for t in tensors:
        t = t.detach().contiguous()
        works.append((dist.isend(t, dst), t))


def recv(src: int) -> tuple[torch.Tensor, ...]:
    """Receive what :func:`send` sent from global rank ``src``."""
    header = torch.empty(HEADER, dtype=torch.int64)
    dist.recv(header, src)
    vals = header.tolist()
    out, at = [], 1
    for _ in range(vals[0]):
        dtype, ndim = _DTYPES[vals[at]], vals[at + 1]
        shape = vals[at + 2 : at + 2 + ndim]
        at += 2 + ndim
        t = torch.empty(shape, dtype=dtype)
        dist.recv(t, src)
        out.append(t)
    return tuple(out)


def wait_all(works: list[Any]) -> None:
    """Complete every pending send."""
    for work, _buf in works:
        work.wait()
    works.clear()
