"""Adam/AdamW on the torch backend: ``torch._fused_adamw_`` / ``torch._fused_adam_``.

``torch._fused_adam_`` adds ``weight_decay * p`` to the gradient (DeepSpeed's ``adam_w_mode=False``)
and ``torch._fused_adamw_`` decays the weight directly (``adam_w_mode=True``); both always apply
bias correction. Without bias correction the kernels are handed a step of +inf, at which
``beta**step == 0`` and both corrections are exactly 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..hyper import AdamHyper, Precision, Scalar, host_scalar
from .staging import check_staged_dtypes, inverse_scale, nonfinite_precheck, run_staged, same_dtype


def _step_tensor(step: Scalar, hyper: AdamHyper, device: torch.device) -> torch.Tensor:
    if not hyper.bias_correction:
        return torch.tensor(float("inf"), device=device)
    if isinstance(step, torch.Tensor) and step.device == device:
        return step.reshape(()).to(torch.float32)
    value = host_scalar(step, device)
    if value is None or value < 1:
        raise ValueError(f"step={value!r}; the step counter is 1 for the first update")
    return torch.tensor(value, dtype=torch.float32, device=device)


def _fused(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    hyper: AdamHyper,
    step: torch.Tensor,
) -> None:
    if not params:
        return
    kernel = torch._fused_adamw_ if hyper.adam_w_mode else torch._fused_adam_
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        [step] * len(params),
        lr=hyper.lr,
        beta1=hyper.beta1,
        beta2=hyper.beta2,
        weight_decay=hyper.weight_decay,
        eps=hyper.eps,
        amsgrad=False,
        maximize=False,
    )


def adam_torch(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    out_lowp: Sequence[torch.Tensor] | None,
    *,
    hyper: AdamHyper,
    step: Scalar,
    precision: Precision,
    op: str,
) -> None:
    """Adam/AdamW over tensor lists with torch's fused kernels (inputs already checked)."""
    live = [i for i, p in enumerate(params) if p.numel() > 0]
    if not live or nonfinite_precheck([grads[i] for i in live], precision.found_inf):
        return
    device = params[live[0]].device
    step_t = _step_tensor(step, hyper, device)
    columns = (params, grads, exp_avgs, exp_avg_sqs)
    plain = precision.trivial and out_lowp is None
    direct = [i for i in live if plain and same_dtype(columns, i)]
    staged = [i for i in live if not (plain and same_dtype(columns, i))]
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i in direct:
        by_dtype.setdefault(params[i].dtype, []).append(i)
    for rows in by_dtype.values():
        p, g, m, v = ([col[i] for i in rows] for col in columns)
        _fused(p, g, m, v, hyper, step_t)
    if not staged:
        return
    check_staged_dtypes(
        op,
        {
            "params": params,
            "grads": grads,
            "exp_avgs": exp_avgs,
            "exp_avg_sqs": exp_avg_sqs,
            "out_lowp": out_lowp,
        },
        staged,
    )
    inv_scale = inverse_scale(precision, op)
    run_staged(
        lambda cols: _fused(cols[0], cols[1], cols[2], cols[3], hyper, step_t),
        columns,
        written=(True, False, True, True),
        grad_col=1,
        inv_scale=inv_scale,
        out_lowp=out_lowp,
        rows=staged,
    )
