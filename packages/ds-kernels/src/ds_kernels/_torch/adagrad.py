"""Adagrad on the torch backend: ``torch._fused_adagrad_`` (L2 weight decay on the gradient, no
learning-rate decay), which is DeepSpeed's CPU Adagrad arithmetic."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .staging import check_staged_dtypes, run_staged, same_dtype


def _fused(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    sums: list[torch.Tensor],
    steps: list[torch.Tensor],
    *,
    lr: float,
    eps: float,
    weight_decay: float,
) -> None:
    if params:
        torch._fused_adagrad_(
            params,
            grads,
            sums,
            steps,
            lr=lr,
            lr_decay=0.0,
            weight_decay=weight_decay,
            eps=eps,
            maximize=False,
        )


def adagrad_torch(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    sums: Sequence[torch.Tensor],
    *,
    lr: float,
    eps: float,
    weight_decay: float,
    step: float,
    op: str,
) -> None:
    """Adagrad over tensor lists; ``step`` only matters to torch's learning-rate decay, which is 0."""
    live = [i for i, p in enumerate(params) if p.numel() > 0]
    if not live:
        return
    step_t = torch.tensor(float(step), device=params[live[0]].device)
    columns = (params, grads, sums)
    direct = [i for i in live if same_dtype(columns, i)]
    staged = [i for i in live if not same_dtype(columns, i)]
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i in direct:
        by_dtype.setdefault(params[i].dtype, []).append(i)
    for rows in by_dtype.values():
        p, g, s = ([col[i] for i in rows] for col in columns)
        _fused(p, g, s, [step_t] * len(rows), lr=lr, eps=eps, weight_decay=weight_decay)
    if staged:
        check_staged_dtypes(op, {"params": params, "grads": grads, "exp_avg_sq": sums}, staged)
        run_staged(
            lambda cols: _fused(
                cols[0], cols[1], cols[2], [step_t] * len(cols[0]), lr=lr, eps=eps, weight_decay=weight_decay
            ),
            columns,
            written=(True, False, True),
            grad_col=1,
            inv_scale=1.0,
            out_lowp=None,
            rows=staged,
        )
