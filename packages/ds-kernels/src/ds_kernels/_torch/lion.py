"""Lion on the torch backend, with ``_foreach`` ops (PyTorch has no fused Lion kernel)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..hyper import LionHyper, Precision
from .staging import check_staged_dtypes, inverse_scale, nonfinite_precheck, run_staged, same_dtype


def _lion_lists(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor], hyper: LionHyper
) -> None:
    if not params:
        return
    direction = torch._foreach_lerp(exp_avgs, grads, 1.0 - hyper.beta1)
    torch._foreach_sign_(direction)
    if hyper.weight_decay:
        torch._foreach_mul_(params, 1.0 - hyper.lr * hyper.weight_decay)
    torch._foreach_add_(params, direction, alpha=-hyper.lr)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - hyper.beta2)


def lion_torch(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    out_lowp: Sequence[torch.Tensor] | None,
    *,
    hyper: LionHyper,
    precision: Precision,
    op: str,
) -> None:
    """Lion over tensor lists (inputs already checked)."""
    live = [i for i, p in enumerate(params) if p.numel() > 0]
    if not live or nonfinite_precheck([grads[i] for i in live], precision.found_inf):
        return
    columns = (params, grads, exp_avgs)
    plain = precision.trivial and out_lowp is None
    direct = [i for i in live if plain and same_dtype(columns, i)]
    staged = [i for i in live if not (plain and same_dtype(columns, i))]
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i in direct:
        by_dtype.setdefault(params[i].dtype, []).append(i)
    for rows in by_dtype.values():
        p, g, m = ([col[i] for i in rows] for col in columns)
        _lion_lists(p, g, m, hyper)
    if not staged:
        return
    check_staged_dtypes(
        op, {"params": params, "grads": grads, "exp_avgs": exp_avgs, "out_lowp": out_lowp}, staged
    )
    inv_scale = inverse_scale(precision, op)
    run_staged(
        lambda cols: _lion_lists(cols[0], cols[1], cols[2], hyper),
        columns,
        written=(True, False, True),
        grad_col=1,
        inv_scale=inv_scale,
        out_lowp=out_lowp,
        rows=staged,
    )
