"""The Adam arithmetic ZenFlow's two optimizers share, with the bias-correction step given explicitly.

ZenFlow's CPU update corrects with the ZenFlow step number rather than a count of its own updates
(Note [zenflow] in :mod:`ds_zero.zenflow`), which torch's optimizers cannot be told; so both the CPU
update and the selective update call :func:`adam_step` on plain tensor lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class AdamHyper:
    """One param group's Adam settings."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decoupled: bool = True  # AdamW: decay the weights; False: add the decay to the gradient (Adam)
    bias_correction: bool = True


def hyper_of(group: dict, *, decoupled: bool) -> AdamHyper:
    """The settings of a torch-style param group (``lr``, ``betas``, ``eps``, ``weight_decay``)."""
    beta1, beta2 = group["betas"]
    return AdamHyper(
        lr=float(group["lr"]),
        beta1=float(beta1),
        beta2=float(beta2),
        eps=float(group["eps"]),
        weight_decay=float(group.get("weight_decay", 0.0)),
        decoupled=decoupled,
        bias_correction=bool(group.get("bias_correction", True)),
    )


@torch.no_grad()
def adam_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    step: int,
    hp: AdamHyper,
) -> None:
    """One Adam update of ``params`` in place, bias-corrected for step ``step`` (torch's AdamW formula)."""
    if not params:
        return
    if hp.weight_decay:
        if hp.decoupled:
            torch._foreach_mul_(params, 1.0 - hp.lr * hp.weight_decay)
        else:
            grads = list(torch._foreach_add(grads, params, alpha=hp.weight_decay))
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - hp.beta1)
    torch._foreach_mul_(exp_avg_sqs, hp.beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - hp.beta2)
    bc1 = 1.0 - hp.beta1**step if hp.bias_correction else 1.0
    bc2 = 1.0 - hp.beta2**step if hp.bias_correction else 1.0
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, math.sqrt(bc2))
    torch._foreach_add_(denom, hp.eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, value=-hp.lr / bc1)
