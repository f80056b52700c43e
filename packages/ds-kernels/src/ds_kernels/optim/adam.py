"""``FusedAdam`` and ``DeepSpeedCPUAdam`` with DeepSpeed's signatures, on ds_kernels' fused steps."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..backend import BackendName
from ..functional import adamw_step_multi
from ..policy import KernelPolicy
from .base import Batch, CPUOnly, StepOptimizer

__all__ = ["DeepSpeedCPUAdam", "FusedAdam"]

_LEGACY_STEP_ARGS = ("grads", "output_params", "scale", "grad_norms")


class _AdamBase(StepOptimizer):
    state_names = ("exp_avg", "exp_avg_sq")
    adam_w_mode: bool = True
    backend: BackendName = "auto"
    policy: KernelPolicy | None = None

    def _run(self, batch: Batch, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        adamw_step_multi(
            batch.params,
            batch.grads,
            batch.column("exp_avg"),
            batch.column("exp_avg_sq"),
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            step=batch.step,
            adam_w_mode=self.adam_w_mode,
            bias_correction=group.get("bias_correction", True),
            backend=self.backend,
            policy=self.policy,
        )

    @torch.no_grad()
    def _step_all(self, closure: Callable[[], Any] | None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            self._check_group(group, index)
            for batch in self._batches(group, index):
                self._run(batch, group)
        return loss


class FusedAdam(_AdamBase):
    """Adam/AdamW in one fused launch per step and dtype (DeepSpeed's ``deepspeed.ops.adam.FusedAdam``).

    Runs the Triton kernels on CUDA/ROCm/XPU parameters and torch's fused kernels on CPU ones.
    ``adam_w_mode=True`` decays weights directly (AdamW); False adds the decay to the gradient.
    States are kept in each parameter's dtype, as DeepSpeed does; the state dict has torch's
    layout and loads into ``torch.optim.AdamW`` (and back).

    Args beyond DeepSpeed's (keyword-only): ``backend`` (``"auto"``, ``"triton"``, ``"torch"``) and
    ``policy`` (:class:`ds_kernels.KernelPolicy`, the Triton launch shape).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        adam_w_mode: bool = True,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        set_grad_none: bool = True,
        *,
        backend: BackendName = "auto",
        policy: KernelPolicy | None = None,
    ) -> None:
        if amsgrad:
            raise RuntimeError(
                "FusedAdam: amsgrad=True is not supported (DeepSpeed's FusedAdam has no "
                "AMSGrad variant either); use torch.optim.AdamW(amsgrad=True)"
            )
        defaults = dict(
            lr=lr, bias_correction=bias_correction, betas=betas, eps=eps, weight_decay=weight_decay
        )
        super().__init__(params, defaults)
        self.adam_w_mode = bool(adam_w_mode)
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
        """One optimizer step over every parameter with a gradient.

        The extra arguments exist only to reject DeepSpeed's long-removed calling convention.
        """
        legacy = [
            name
            for name, value in zip(_LEGACY_STEP_ARGS, (grads, output_params, scale, grad_norms))
            if value is not None
        ]
        if legacy:
            raise RuntimeError(
                f"FusedAdam.step: {', '.join(legacy)} are not accepted; call step() with no "
                "arguments, as with torch.optim.Adam"
            )
        return self._step_all(closure)


class DeepSpeedCPUAdam(CPUOnly, _AdamBase):
    """Adam/AdamW for parameters in CPU memory (ZeRO-Offload), on PyTorch's fused CPU kernels
    (DeepSpeed's ``deepspeed.ops.adam.DeepSpeedCPUAdam``, with no C++ build).

    ``fp32_optimizer_states=True`` keeps the moments in float32 whatever the parameters' dtype
    (bf16/fp16 parameters are then updated through float32 chunks).
    """

    cpu_hint = " (set zero_optimization.offload_optimizer.device to 'cpu', or use FusedAdam)"

    def __init__(
        self,
        model_params: Iterable[Any],
        lr: float = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        adamw_mode: bool = True,
        fp32_optimizer_states: bool = True,
    ) -> None:
        if amsgrad:
            raise RuntimeError("DeepSpeedCPUAdam: amsgrad=True is not supported (nor is it by DeepSpeed)")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            amsgrad=amsgrad,
        )
        super().__init__(model_params, defaults)
        self.adam_w_mode = bool(adamw_mode)
        self.fp32_optimizer_states = fp32_optimizer_states
        self.backend = "torch"
        self.set_grad_none = True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, refusing ``amsgrad=True`` as the constructor does."""
        if param_group.get("amsgrad", self.defaults.get("amsgrad", False)):
            raise RuntimeError("DeepSpeedCPUAdam: amsgrad=True is not supported")
        super().add_param_group(param_group)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimizer step over every parameter with a gradient."""
        return self._step_all(closure)
