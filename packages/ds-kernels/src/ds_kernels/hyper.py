"""Frozen hyperparameter records for the fused steps, and the host-side scalars derived from them.

The public functional entries take plain keyword arguments; they validate them once into these
records so that the backends receive one small immutable object instead of a dozen loose values.

Note [step and loss scale without host syncs]: ``step`` and ``grad_scale`` may be Python numbers,
CPU tensors, or one-element tensors on the parameters' device. Numbers and CPU tensors are read on
the host (reading a CPU tensor does not wait for the GPU), and the bias corrections are computed in
float64 there. A device tensor is handed to the kernel as a pointer, which reads it and computes
the corrections itself, so nothing blocks the host and the step can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "AdamHyper",
    "LambHyper",
    "LionHyper",
    "Precision",
    "adam_host_scalars",
    "bias_corrections",
    "device_scalar",
    "host_scalar",
]

Scalar = float | int | torch.Tensor


def _check_range(op: str, name: str, value: float, low: float, high: float, *, high_open: bool) -> None:
    ok = low <= value < high if high_open else low <= value <= high
    if not ok or math.isnan(value):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{op}: {name}={value!r}; expected a value in [{low}, {high}{bracket}")


@dataclass(frozen=True)
class AdamHyper:
    """Adam/AdamW hyperparameters (``adam_w_mode``: decoupled weight decay vs L2 on the gradient)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    adam_w_mode: bool = True
    bias_correction: bool = True

    def validate(self, op: str) -> AdamHyper:
        """Raise ValueError naming the first out-of-range value; return self."""
        _check_range(op, "lr", self.lr, 0.0, math.inf, high_open=True)
        _check_range(op, "beta1", self.beta1, 0.0, 1.0, high_open=True)
        _check_range(op, "beta2", self.beta2, 0.0, 1.0, high_open=True)
        _check_range(op, "eps", self.eps, 0.0, math.inf, high_open=True)
        _check_range(op, "weight_decay", self.weight_decay, 0.0, math.inf, high_open=True)
        return self


@dataclass(frozen=True)
class LionHyper:
    """Lion hyperparameters (decoupled weight decay, as in the paper and DeepSpeed's FusedLion)."""

    lr: float
    beta1: float
    beta2: float
    weight_decay: float

    def validate(self, op: str) -> LionHyper:
        """Raise ValueError naming the first out-of-range value; return self."""
        _check_range(op, "lr", self.lr, 0.0, math.inf, high_open=True)
        _check_range(op, "beta1", self.beta1, 0.0, 1.0, high_open=False)
        _check_range(op, "beta2", self.beta2, 0.0, 1.0, high_open=False)
        _check_range(op, "weight_decay", self.weight_decay, 0.0, math.inf, high_open=True)
        return self


@dataclass(frozen=True)
class LambHyper:
    """LAMB hyperparameters with DeepSpeed's FusedLamb meaning of each field."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    bias_correction: bool = True
    eps_inside_sqrt: bool = False
    max_coeff: float = 10.0
    min_coeff: float = 0.01

    def validate(self, op: str) -> LambHyper:
        """Raise ValueError naming the first out-of-range value; return self."""
        _check_range(op, "lr", self.lr, 0.0, math.inf, high_open=True)
        _check_range(op, "beta1", self.beta1, 0.0, 1.0, high_open=True)
        _check_range(op, "beta2", self.beta2, 0.0, 1.0, high_open=True)
        _check_range(op, "eps", self.eps, 0.0, math.inf, high_open=True)
        _check_range(op, "weight_decay", self.weight_decay, 0.0, math.inf, high_open=True)
        if not 0.0 <= self.min_coeff <= self.max_coeff:
            raise ValueError(
                f"{op}: min_coeff={self.min_coeff!r}, max_coeff={self.max_coeff!r}; "
                "expected 0 <= min_coeff <= max_coeff"
            )
        return self


@dataclass(frozen=True)
class Precision:
    """Mixed-precision inputs of a step: the loss scale to divide gradients by and the
    non-finite flag (see :func:`ds_kernels.adamw_step_flat` for the flag's contract)."""

    grad_scale: Scalar = 1.0
    found_inf: torch.Tensor | None = None

    @property
    def trivial(self) -> bool:
        """No unscaling and no flag: the plain same-dtype kernels apply."""
        return (
            self.found_inf is None
            and not isinstance(self.grad_scale, torch.Tensor)
            and float(self.grad_scale) == 1.0
        )


def host_scalar(value: Scalar, device: torch.device) -> float | None:
    """The value as a host float, or None when it is a tensor on ``device``'s accelerator
    (the kernel then reads it itself; see Note [step and loss scale without host syncs])."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"expected a one-element tensor, got shape {tuple(value.shape)}")
        if value.device.type == "cpu" or value.device != device:
            return float(value.item())
        return None
    return float(value)


def device_scalar(value: Scalar, device: torch.device) -> torch.Tensor | None:
    """The one-element device tensor behind ``value`` when the kernel should read it, else None."""
    if isinstance(value, torch.Tensor) and host_scalar(value, device) is None:
        return value
    return None


def bias_corrections(beta1: float, beta2: float, step: float, enabled: bool) -> tuple[float, float]:
    """``(1 - beta1**step, 1 - beta2**step)`` in float64, or ``(1, 1)`` when disabled."""
    if not enabled:
        return 1.0, 1.0
    if step < 1:
        raise ValueError(f"step={step!r}; the step counter is 1 for the first update")
    return -math.expm1(step * math.log(beta1)) if beta1 > 0 else 1.0, -math.expm1(
        step * math.log(beta2)
    ) if beta2 > 0 else 1.0


def adam_host_scalars(hyper: AdamHyper, step: float) -> tuple[float, float]:
    """``(step_size, inv_sqrt_bc2)``: the update is ``step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)``."""
    bc1, bc2 = bias_corrections(hyper.beta1, hyper.beta2, step, hyper.bias_correction)
    return hyper.lr / bc1, 1.0 / math.sqrt(bc2)
