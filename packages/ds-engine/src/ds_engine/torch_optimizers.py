"""PyTorch implementations of the config optimizers torch does not ship: Lamb and Lion.

They are the fallbacks used when ds_kernels offers no fused version; the update rules are DeepSpeed's
(``FusedLamb``: Adam moments, ``update = m / (sqrt(v) + eps) + weight_decay * p``, a per-tensor trust ratio
``||p|| / ||update||`` clamped to ``[min_coeff, max_coeff]``, step ``lr * sqrt(1 - b2^t) / (1 - b1^t)``
with bias correction; ``FusedLion``: sign of the interpolated momentum, decoupled weight decay).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, overload

import torch
from torch.optim import Optimizer


class Lamb(Optimizer):
    """LAMB with DeepSpeed ``FusedLamb``'s parameters."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        eps_inside_sqrt: bool = False,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
        max_coeff: float = 10.0,
        min_coeff: float = 0.01,
        amsgrad: bool = False,
    ) -> None:
        if amsgrad:
            raise ValueError("Lamb does not support amsgrad")
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid Lamb hyper-parameters: lr={lr}, eps={eps}, betas={betas}")
        defaults = dict(
            lr=lr,
            bias_correction=bias_correction,
            betas=betas,
            eps=eps,
            eps_inside_sqrt=eps_inside_sqrt,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
            max_coeff=max_coeff,
            min_coeff=min_coeff,
        )
        super().__init__(params, defaults)

    # torch.optim.Optimizer.step is overloaded on the closure: an override must repeat both forms.
    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One LAMB update of every parameter that has a gradient."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                self._update(p, p.grad, state, group, b1, b2)
        return loss

    @staticmethod
    def _update(
        p: torch.Tensor,
        grad: torch.Tensor,
        state: dict[str, Any],
        group: dict[str, Any],
        b1: float,
        b2: float,
    ) -> None:
        grad = grad.float()
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (v + group["eps"]).sqrt_() if group["eps_inside_sqrt"] else v.sqrt().add_(group["eps"])
        weight = p.float()
        update = m / denom
        if group["weight_decay"]:
            update.add_(weight, alpha=group["weight_decay"])
        step_size = group["lr"]
        if group["bias_correction"]:
            t = state["step"]
            step_size = step_size * math.sqrt(1 - b2**t) / (1 - b1**t)
        w_norm, u_norm = weight.norm().item(), update.norm().item()
        coeff = 1.0
        if w_norm != 0 and u_norm != 0:
            coeff = min(max(w_norm / u_norm, group["min_coeff"]), group["max_coeff"])
        p.copy_(weight.add_(update, alpha=-step_size * coeff))


class Lion(Optimizer):
    """Lion with DeepSpeed ``FusedLion``'s parameters."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        set_grad_none: bool = True,
    ) -> None:
        if lr < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid Lion hyper-parameters: lr={lr}, betas={betas}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    # torch.optim.Optimizer.step is overloaded on the closure: an override must repeat both forms.
    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One Lion update of every parameter that has a gradient."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                grad, m = p.grad, state["exp_avg"]
                direction = m.mul(b1).add_(grad, alpha=1 - b1).sign_()
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(direction, alpha=-lr)
                m.mul_(b2).add_(grad, alpha=1 - b2)
        return loss
