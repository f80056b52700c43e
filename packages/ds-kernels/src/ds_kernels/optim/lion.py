"""``FusedLion`` and ``DeepSpeedCPULion`` with DeepSpeed's signatures, on ds_kernels' fused steps."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..backend import BackendName
from ..functional import lion_step_multi
from ..policy import KernelPolicy
from .base import CPUOnly, StepOptimizer

__all__ = ["DeepSpeedCPULion", "FusedLion"]


class _LionBase(StepOptimizer):
    state_names = ("exp_avg",)
    backend: BackendName = "auto"
    policy: KernelPolicy | None = None

    @torch.no_grad()
    def _step_all(self, closure: Callable[[], Any] | None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            beta1, beta2 = group["betas"]
            for batch in self._batches(group, index):
                lion_step_multi(
                    batch.params,
                    batch.grads,
                    batch.column("exp_avg"),
                    lr=float(group["lr"]),
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=group["weight_decay"],
                    backend=self.backend,
                    policy=self.policy,
                )
        return loss


class FusedLion(_LionBase):
    """Lion in one fused launch per step and dtype (DeepSpeed's ``deepspeed.ops.lion.FusedLion``).

    Triton on CUDA/ROCm/XPU parameters, ``_foreach`` ops on CPU. ``sign(0) == 0`` as in the paper.
    Keyword-only extras: ``backend`` and ``policy`` as for :class:`ds_kernels.FusedAdam`.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        set_grad_none: bool = True,
        *,
        backend: BackendName = "auto",
        policy: KernelPolicy | None = None,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))
        self.set_grad_none = set_grad_none
        self.backend = backend
        self.policy = policy

    def step(
        self,
        closure: Callable[[], Any] | None = None,
        grads: Any = None,
        output_params: Any = None,
        scale: Any = None,
        grad_norms: Any = None,
        grad_scaler: Any = None,
    ) -> Any:
        """One optimizer step; the extra arguments only reject DeepSpeed's removed calling convention."""
        if any(v is not None for v in (grads, output_params, scale, grad_norms)):
            raise RuntimeError(
                "FusedLion.step: grads/output_params/scale/grad_norms are not accepted; "
                "call step() with no arguments"
            )
        return self._step_all(closure)


class DeepSpeedCPULion(CPUOnly, _LionBase):
    """Lion for parameters in CPU memory (DeepSpeed's ``deepspeed.ops.lion.DeepSpeedCPULion``),
    with ``_foreach`` ops and float32 states by default (``fp32_optimizer_states``)."""

    cpu_hint = " (use FusedLion for accelerator tensors)"

    def __init__(
        self,
        model_params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0,
        fp32_optimizer_states: bool = True,
    ) -> None:
        super().__init__(model_params, dict(lr=lr, betas=betas, weight_decay=weight_decay))
        self.fp32_optimizer_states = fp32_optimizer_states
        self.backend = "torch"

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step over every parameter with a gradient."""
        return self._step_all(closure)
