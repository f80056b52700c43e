"""Shared machinery of the torch backend: same-dtype fast path detection, float32 staging for mixed
dtypes, and the non-finite pre-check.

Note [torch backend precision]: PyTorch's fused kernels want every tensor of a call in one dtype.
When they are (and no loss scale or 16-bit output is asked for), the lists go to them as they are.
Otherwise the tensors are cut into chunks of about a million elements, each chunk is staged in
float32 (views for float32 tensors, copies for 16-bit ones; gradients are unscaled in the copy,
never in place), updated, and copied back; this bounds the extra memory to a few chunks.

Note [torch backend flag]: unlike the Triton kernels, the torch backend checks every gradient
before it updates anything and reads the flag on the host, so a flagged step changes nothing.
On CPU that read costs nothing; on an accelerator it is a synchronization, which is acceptable on
this fallback path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..backend import UnsupportedKernelInput
from ..hyper import Precision

CHUNK = 1 << 20
STAGED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_CHECK_CHUNK = 1 << 24


def same_dtype(columns: Sequence[Sequence[torch.Tensor] | None], i: int) -> bool:
    """True when row ``i`` of every present column has one dtype."""
    dtypes = {col[i].dtype for col in columns if col is not None}
    return len(dtypes) == 1


def check_staged_dtypes(
    op: str, columns: dict[str, Sequence[torch.Tensor] | None], rows: Sequence[int]
) -> None:
    """Mixed-dtype rows are staged through float32; reject dtypes that cannot be."""
    for role, col in columns.items():
        for i in rows:
            if col is not None and col[i].dtype not in STAGED_DTYPES:
                raise UnsupportedKernelInput(
                    f"{op}: {role}[{i}] has dtype {col[i].dtype} on {col[i].device} alongside other dtypes; "
                    "mixed-precision steps take float32, bfloat16 and float16"
                )


def inverse_scale(precision: Precision, op: str) -> float:
    """1 / grad_scale as a host float (a device tensor is read: Note [torch backend flag])."""
    scale = precision.grad_scale
    value = float(scale.item()) if isinstance(scale, torch.Tensor) else float(scale)
    if value == 0 or not math.isfinite(value):
        raise ValueError(f"{op}: grad_scale={value!r}; expected a finite non-zero loss scale")
    return 1.0 / value


def nonfinite_precheck(grads: Sequence[torch.Tensor], found_inf: torch.Tensor | None) -> bool:
    """Raise ``found_inf`` if any gradient holds inf/NaN; True when the step must be skipped.

    See Note [torch backend flag].
    """
    if found_inf is None:
        return False
    if found_inf.numel() != 1 or found_inf.dtype != torch.float32:
        raise UnsupportedKernelInput(
            f"found_inf must be a one-element float32 tensor; got {tuple(found_inf.shape)} {found_inf.dtype}"
        )
    for g in grads:
        flat = g.reshape(-1)
        for lo in range(0, flat.numel(), _CHECK_CHUNK):
            bad = torch.logical_not(torch.isfinite(flat[lo : lo + _CHECK_CHUNK]).all())
            found_inf.copy_(
                torch.maximum(found_inf, bad.to(found_inf.device, torch.float32)).view_as(found_inf)
            )
    return bool(found_inf.item() != 0)


def run_staged(
    update: Callable[[list[list[torch.Tensor]]], None],
    columns: Sequence[Sequence[torch.Tensor]],
    *,
    written: Sequence[bool],
    grad_col: int,
    inv_scale: float,
    out_lowp: Sequence[torch.Tensor] | None,
    rows: Sequence[int],
    chunk: int = CHUNK,
) -> None:
    """Apply ``update`` to float32 chunks of ``columns`` (column 0 is the parameter).

    ``update`` receives one list per column and updates the written columns' pieces in place;
    see Note [torch backend precision].
    """
    pending: list[list[torch.Tensor]] = [[] for _ in columns]
    writebacks: list[tuple[torch.Tensor, torch.Tensor]] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if size:
            update(pending)
            for dst, src in writebacks:
                dst.copy_(src)
        for col in pending:
            col.clear()
        writebacks.clear()
        size = 0

    for i in rows:
        n = columns[0][i].numel()
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            for c, col in enumerate(columns):
                view = col[i].reshape(-1)[lo:hi]
                unscale = c == grad_col and inv_scale != 1.0
                piece = view.to(torch.float32, copy=unscale or view.dtype != torch.float32)
                if unscale:
                    piece.mul_(inv_scale)
                if written[c] and view.dtype != torch.float32:
                    writebacks.append((view, piece))
                pending[c].append(piece)
            if out_lowp is not None:
                writebacks.append((out_lowp[i].reshape(-1)[lo:hi], pending[0][-1]))
            size += hi - lo
            if size >= chunk:
                flush()
    flush()
