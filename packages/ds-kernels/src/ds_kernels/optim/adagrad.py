"""``DeepSpeedCPUAdagrad`` with DeepSpeed's signature, on ``torch._fused_adagrad_``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .._torch.adagrad import adagrad_torch
from ..tensor_lists import required, validate_lists
from .base import CPUOnly, StepOptimizer

__all__ = ["DeepSpeedCPUAdagrad"]


class DeepSpeedCPUAdagrad(CPUOnly, StepOptimizer):
    """Adagrad for parameters in CPU memory (DeepSpeed's ``deepspeed.ops.adagrad.DeepSpeedCPUAdagrad``).

    ``sum += g * g``; ``p -= lr * g / (sqrt(sum) + eps)``, with ``weight_decay * p`` added to ``g``
    first. The accumulator is kept under DeepSpeed's state key ``exp_avg_sq``. Sparse gradients
    (embedding layers) are densified when ``weight_decay == 0``, which is exact: rows without a
    gradient add 0 to their accumulator and do not move.
    """

    state_names = ("exp_avg_sq",)

    cpu_hint = ""

    def __init__(
        self,
        model_params: Iterable[Any],
        lr: float = 1e-2,
        eps: float = 1e-10,
        weight_decay: float = 0,
        amsgrad: bool = False,
        fp32_optimizer_states: bool = True,
    ) -> None:
        super().__init__(model_params, dict(lr=lr, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad))
        self.fp32_optimizer_states = fp32_optimizer_states
        self.set_grad_none = True

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)

    def _densify(self, grad: torch.Tensor, group: dict[str, Any], where: str) -> torch.Tensor:
        if group["weight_decay"]:
            raise RuntimeError(
                f"DeepSpeedCPUAdagrad: {where} has a sparse gradient and weight_decay="
                f"{group['weight_decay']}; sparse gradients need weight_decay=0"
            )
        return grad.to_dense()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step over every parameter with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        op = "DeepSpeedCPUAdagrad.step"
        for index, group in enumerate(self.param_groups):
            for batch in self._batches(group, index):
                cols = validate_lists(
                    op,
                    {"params": batch.params, "grads": batch.grads, "exp_avg_sq": batch.column("exp_avg_sq")},
                    read_only=frozenset({"grads"}),
                )
                adagrad_torch(
                    required(cols, "params"),
                    required(cols, "grads"),
                    required(cols, "exp_avg_sq"),
                    lr=float(group["lr"]),
                    eps=group["eps"],
                    weight_decay=group["weight_decay"],
                    step=batch.step,
                    op=op,
                )
        return loss
