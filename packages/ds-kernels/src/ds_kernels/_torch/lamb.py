"""LAMB on the torch backend, tensor by tensor in float32 (each trust ratio needs whole-tensor norms)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..hyper import LambHyper, Precision, Scalar, bias_corrections, host_scalar
from .staging import check_staged_dtypes, inverse_scale, nonfinite_precheck


def _lamb_one(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor | None,
    hyper: LambHyper,
    step_size: float,
    inv_scale: float,
) -> torch.Tensor:
    p32, m32, v32 = (t.to(torch.float32) for t in (p, m, v))  # views when already float32
    g32 = g.to(torch.float32, copy=True).mul_(inv_scale)
    m32.mul_(hyper.beta1).add_(g32, alpha=1.0 - hyper.beta1)
    v32.mul_(hyper.beta2).addcmul_(g32, g32, value=1.0 - hyper.beta2)
    denom = (v32 + hyper.eps).sqrt_() if hyper.eps_inside_sqrt else v32.sqrt().add_(hyper.eps)
    update = (m32 / denom).add_(p32, alpha=hyper.weight_decay)
    w_norm, u_norm = torch.linalg.vector_norm(p32), torch.linalg.vector_norm(update)
    ratio = (w_norm / u_norm).clamp(hyper.min_coeff, hyper.max_coeff)
    coeff = torch.where((w_norm > 0) & (u_norm > 0), ratio, torch.ones_like(ratio))
    p32.sub_(update.mul_(coeff), alpha=step_size)
    for dst, src in ((p, p32), (m, m32), (v, v32)):
        if dst.dtype != torch.float32:
            dst.copy_(src)
    if out is not None:
        out.copy_(p32)
    return coeff


def lamb_torch(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    out_lowp: Sequence[torch.Tensor] | None,
    *,
    hyper: LambHyper,
    step: Scalar,
    precision: Precision,
    op: str,
) -> list[torch.Tensor]:
    """LAMB over tensor lists (inputs already checked); returns each tensor's trust ratio."""
    coeffs = [torch.ones((), device=p.device) for p in params]
    live = [i for i, p in enumerate(params) if p.numel() > 0]
    if not live or nonfinite_precheck([grads[i] for i in live], precision.found_inf):
        return coeffs
    check_staged_dtypes(
        op,
        {
            "params": params,
            "grads": grads,
            "exp_avgs": exp_avgs,
            "exp_avg_sqs": exp_avg_sqs,
            "out_lowp": out_lowp,
        },
        live,
    )
    step_value = host_scalar(step, torch.device("cpu"))
    assert step_value is not None  # on the CPU every step is a host value
    bc1, bc2 = bias_corrections(hyper.beta1, hyper.beta2, float(step_value), hyper.bias_correction)
    step_size = hyper.lr * bc2**0.5 / bc1
    inv_scale = inverse_scale(precision, op)
    for i in live:
        coeffs[i] = _lamb_one(
            params[i],
            grads[i],
            exp_avgs[i],
            exp_avg_sqs[i],
            None if out_lowp is None else out_lowp[i],
            hyper,
            step_size,
            inv_scale,
        )
    return coeffs
