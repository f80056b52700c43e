"""``FusedLamb`` with DeepSpeed's signature, on ds_kernels' fused LAMB step."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ..backend import BackendName
from ..functional import lamb_step_multi
from ..policy import KernelPolicy
from .base import Batch, StepOptimizer

__all__ = ["FusedLamb"]


def _per_group(value: Any, n_groups: int, what: str) -> list[Any]:
    """DeepSpeed's legacy per-group arguments: None, one list (one group), or a list of lists."""
    if value is None:
        return [None] * n_groups
    value = list(value)
    if value and not isinstance(value[0], (list, tuple)):
        value = [value]
    if len(value) != n_groups:
        raise ValueError(f"FusedLamb.step: {what} has {len(value)} groups; the optimizer has {n_groups}")
    return value


class FusedLamb(StepOptimizer):
    """LAMB with per-tensor trust ratios (DeepSpeed's ``deepspeed.ops.lamb.FusedLamb``).

    Two fused launches per step and dtype on CUDA/ROCm/XPU (Triton), tensor-by-tensor torch ops on
    CPU. ``get_lamb_coeffs()`` returns the last step's trust ratios, as DeepSpeed's does.
    Keyword-only extras: ``backend`` and ``policy`` as for :class:`ds_kernels.FusedAdam`.
    """

    state_names = ("exp_avg", "exp_avg_sq")

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
        *,
        backend: BackendName = "auto",
        policy: KernelPolicy | None = None,
    ) -> None:
        if amsgrad:
            raise RuntimeError("FusedLamb: amsgrad=True is not supported (nor is it by DeepSpeed)")
        defaults = dict(
            lr=lr,
            bias_correction=bias_correction,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
            max_coeff=max_coeff,
            min_coeff=min_coeff,
        )
        super().__init__(params, defaults)
        self.eps_inside_sqrt = bool(eps_inside_sqrt)
        self.backend = backend
        self.policy = policy
        self.lamb_coeffs: list[torch.Tensor] = []

    def _combined_scale(self, group: dict[str, Any], scale: float, grad_norm: Any) -> float:
        """The loss scale times DeepSpeed's max_grad_norm clipping factor for one group."""
        if group["max_grad_norm"] <= 0:
            return scale
        if grad_norm is None:
            raise ValueError(
                "FusedLamb.step: max_grad_norm > 0 needs grad_norms (the gradient norm of each "
                "group, times the loss scale)"
            )
        clip = (float(grad_norm) / scale + 1e-6) / group["max_grad_norm"]
        return clip * scale if clip > 1 else scale

    def _run(
        self, batch: Batch, group: dict[str, Any], outputs: Sequence[torch.Tensor] | None, grad_scale: float
    ) -> list[torch.Tensor]:
        beta1, beta2 = group["betas"]
        return lamb_step_multi(
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
            bias_correction=group["bias_correction"],
            eps_inside_sqrt=self.eps_inside_sqrt,
            max_coeff=group["max_coeff"],
            min_coeff=group["min_coeff"],
            grad_scale=grad_scale,
            out_lowp=outputs,
            backend=self.backend,
            policy=self.policy,
        )

    @torch.no_grad()
    def step(
        self,
        closure: Callable[[], Any] | None = None,
        grads: Any = None,
        output_params: Any = None,
        scale: float = 1.0,
        grad_norms: Any = None,
    ) -> Any:
        """One LAMB step.

        Args (DeepSpeed's legacy mixed-precision interface, all optional):
            grads: gradients to use instead of ``p.grad`` (one list, or one list per group).
            output_params: 16-bit tensors that receive the updated parameters (same nesting).
            scale: loss scale to divide the gradients by.
            grad_norms: one gradient norm per group (times ``scale``), used with ``max_grad_norm``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        n = len(self.param_groups)
        grads_g = _per_group(grads, n, "grads")
        outs_g = _per_group(output_params, n, "output_params")
        norms_g = [None] * n if grad_norms is None else list(grad_norms)
        self.lamb_coeffs = []
        for index, (group, g_list, o_list, norm) in enumerate(
            zip(self.param_groups, grads_g, outs_g, norms_g)
        ):
            if isinstance(norm, (list, tuple)):
                raise ValueError("FusedLamb.step: grad_norms takes one norm per group, not one per parameter")
            combined = self._combined_scale(group, float(scale), norm)
            out_of = {} if o_list is None else {id(p): o for p, o in zip(group["params"], o_list)}
            for batch in self._batches(group, index, grads=g_list):
                outputs = [out_of[id(p)] for p in batch.params] if out_of else None
                self.lamb_coeffs.extend(self._run(batch, group, outputs, combined))
        return loss

    def get_lamb_coeffs(self) -> list[float]:
        """The trust ratio of each parameter updated by the last step (reads them from the device)."""
        return [float(c.item()) for c in self.lamb_coeffs]
