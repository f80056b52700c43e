"""Functional fused optimizer steps: the entry points that ZeRO and the optimizer classes call.

Each step updates its tensors in place and returns without synchronizing with the device. Every
entry has a ``_flat`` form (one contiguous buffer, as a ZeRO shard is) and a ``_multi`` form
(parallel lists; one launch per device and dtype signature, however many tensors).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

import torch

from ._torch.adam import adam_torch
from ._torch.lamb import lamb_torch
from ._torch.lion import lion_torch
from .backend import BackendName, resolve_backend
from .hyper import AdamHyper, LambHyper, LionHyper, Precision, Scalar
from .policy import DEFAULT_POLICY, KernelPolicy
from .tensor_lists import required, validate_lists

__all__ = [
    "adamw_step_flat",
    "adamw_step_multi",
    "lamb_step_flat",
    "lamb_step_multi",
    "lion_step_flat",
    "lion_step_multi",
]

TensorList = Sequence[torch.Tensor]


def _triton(module: str) -> ModuleType:
    """Import a Triton kernel module on first use (this is where triton itself gets imported)."""
    return importlib.import_module(f"ds_kernels._triton.{module}")


def _prepare(op: str, columns: dict[str, TensorList | None], backend: BackendName) -> tuple[dict, str]:
    cols = validate_lists(op, columns, read_only=frozenset({"grads"}))
    return cols, resolve_backend(required(cols, "params"), backend=backend, op=op)


def adamw_step_flat(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: Scalar,
    adam_w_mode: bool = True,
    bias_correction: bool = True,
    grad_scale: Scalar = 1.0,
    found_inf: torch.Tensor | None = None,
    out_lowp: torch.Tensor | None = None,
    backend: BackendName = "auto",
    policy: KernelPolicy | None = None,
) -> None:
    """One fused Adam/AdamW step over a flat buffer, in place, in one pass.

    Args:
        param: the (master) parameters, contiguous; float32 for mixed precision, or bf16/fp16.
        grad: gradients of the same size, in any of float32/bfloat16/float16 (may be the scaled
            gradients of a loss-scaled fp16 run; see ``grad_scale``).
        exp_avg, exp_avg_sq: Adam's first and second moments, same size, updated in place.
        lr, beta1, beta2, eps, weight_decay: the usual Adam hyperparameters.
        step: the step number of *this* update, starting at 1: a Python number, a CPU tensor, or a
            one-element tensor on the parameters' device, which the kernel reads itself (no host
            sync, graph-capturable). Only used for bias correction.
        adam_w_mode: DeepSpeed's switch: True decays weights directly (AdamW,
            ``p -= lr * weight_decay * p``); False adds ``weight_decay * p`` to the gradient (Adam with
            L2 regularisation).
        bias_correction: divide the moments by ``1 - beta**step`` (torch always does).
        grad_scale: the loss scale; gradients are divided by it inside the kernel. A number or a
            one-element device tensor (read by the kernel).
        found_inf: optional one-element float32 tensor on the device. The kernel *reads* it first:
            if it is non-zero the whole step changes nothing. It *reports* too: a block whose
            gradients hold inf/NaN is left unchanged and sets it to 1. Blocks updated before the
            flag was raised stay updated, so a step that raises the flag is a failed step: skip it
            and lower the loss scale, as dynamic loss scaling does. For all-or-nothing steps
            (several ranks, shards), compute the flag before the step without a host sync, e.g.
            ``found_inf = (~torch.isfinite(total_grad_norm)).float()`` all-reduced with MAX, and
            pass it in. (The torch backend checks every gradient first and reads the flag on the
            host, so there a flagged step never changes anything.)
        out_lowp: optional bf16/fp16 buffer of the same size that receives the updated parameters
            rounded to its dtype in the same pass (the model's working copy of fp32 master weights).
        backend: ``"auto"`` (Triton on CUDA/ROCm/XPU, torch's fused kernels on CPU), ``"triton"``,
            or ``"torch"``.
        policy: launch shape for the Triton kernels (``KernelPolicy``).

    Bytes moved per element: float32 everything 28 (read p, g, m, v; write p, m, v); fp32 master
    and states with 16-bit gradient and 16-bit output 28 (14 read, 14 written).

    Raises:
        UnsupportedKernelInput: a dtype/device/layout that no backend handles, named in the message.
        ValueError: mismatched sizes or devices, or an out-of-range hyperparameter.
    """
    adamw_step_multi(
        [param],
        [grad],
        [exp_avg],
        [exp_avg_sq],
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        step=step,
        adam_w_mode=adam_w_mode,
        bias_correction=bias_correction,
        grad_scale=grad_scale,
        found_inf=found_inf,
        out_lowp=None if out_lowp is None else [out_lowp],
        backend=backend,
        policy=policy,
        _flat=True,
    )


def adamw_step_multi(
    params: TensorList,
    grads: TensorList,
    exp_avgs: TensorList,
    exp_avg_sqs: TensorList,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: Scalar,
    adam_w_mode: bool = True,
    bias_correction: bool = True,
    grad_scale: Scalar = 1.0,
    found_inf: torch.Tensor | None = None,
    out_lowp: TensorList | None = None,
    backend: BackendName = "auto",
    policy: KernelPolicy | None = None,
    _flat: bool = False,
) -> None:
    """One fused Adam/AdamW step over parallel tensor lists: one launch per device and dtype
    signature, whatever the number of tensors. Arguments as :func:`adamw_step_flat`, per list.

    All tensors share ``step``; empty tensors are skipped.
    """
    op = "ds_kernels.adamw_step_flat" if _flat else "ds_kernels.adamw_step_multi"
    hyper = AdamHyper(
        float(lr),
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
        bool(adam_w_mode),
        bool(bias_correction),
    ).validate(op)
    cols, chosen = _prepare(
        op,
        {
            "params": params,
            "grads": grads,
            "exp_avgs": exp_avgs,
            "exp_avg_sqs": exp_avg_sqs,
            "out_lowp": out_lowp,
        },
        backend,
    )
    precision = Precision(grad_scale, found_inf)
    args = (cols["params"], cols["grads"], cols["exp_avgs"], cols["exp_avg_sqs"], cols["out_lowp"])
    if chosen == "torch":
        adam_torch(*args, hyper=hyper, step=step, precision=precision, op=op)
    elif _flat:
        out = None if out_lowp is None else args[4][0]
        _triton("adam").adam_flat(
            *(a[0] for a in args[:4]),
            out,
            hyper=hyper,
            step=step,
            precision=precision,
            policy=policy or DEFAULT_POLICY,
            op=op,
        )
    else:
        _triton("adam").adam_multi(
            *args, hyper=hyper, step=step, precision=precision, policy=policy or DEFAULT_POLICY, op=op
        )


def lion_step_flat(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    grad_scale: Scalar = 1.0,
    found_inf: torch.Tensor | None = None,
    out_lowp: torch.Tensor | None = None,
    backend: BackendName = "auto",
    policy: KernelPolicy | None = None,
) -> None:
    """One fused Lion step over a flat buffer, in place (28 -> 20 bytes/element in fp32: reads p, g,
    m; writes p, m).

    ``c = beta1 * m + (1 - beta1) * g``; ``p = p * (1 - lr * weight_decay) - lr * sign(c)``;
    ``m = beta2 * m + (1 - beta2) * g``. ``grad_scale``, ``found_inf``, ``out_lowp``, ``backend`` and
    ``policy`` mean what they mean for :func:`adamw_step_flat`.
    """
    lion_step_multi(
        [param],
        [grad],
        [exp_avg],
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        grad_scale=grad_scale,
        found_inf=found_inf,
        out_lowp=None if out_lowp is None else [out_lowp],
        backend=backend,
        policy=policy,
        _flat=True,
    )


def lion_step_multi(
    params: TensorList,
    grads: TensorList,
    exp_avgs: TensorList,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    grad_scale: Scalar = 1.0,
    found_inf: torch.Tensor | None = None,
    out_lowp: TensorList | None = None,
    backend: BackendName = "auto",
    policy: KernelPolicy | None = None,
    _flat: bool = False,
) -> None:
    """One fused Lion step over parallel tensor lists (see :func:`lion_step_flat`)."""
    op = "ds_kernels.lion_step_flat" if _flat else "ds_kernels.lion_step_multi"
    hyper = LionHyper(float(lr), float(beta1), float(beta2), float(weight_decay)).validate(op)
    cols, chosen = _prepare(
        op, {"params": params, "grads": grads, "exp_avgs": exp_avgs, "out_lowp": out_lowp}, backend
    )
    precision = Precision(grad_scale, found_inf)
    args = (cols["params"], cols["grads"], cols["exp_avgs"], cols["out_lowp"])
    if chosen == "torch":
        lion_torch(*args, hyper=hyper, precision=precision, op=op)
    elif _flat:
        out = None if out_lowp is None else args[3][0]
        _triton("lion").lion_flat(
            *(a[0] for a in args[:3]),
            out,
            hyper=hyper,
            precision=precision,
            policy=policy or DEFAULT_POLICY,
            op=op,
        )
    else:
        _triton("lion").lion_multi(
            *args, hyper=hyper, precision=precision, policy=policy or DEFAULT_POLICY, op=op
        )


def lamb_step_flat(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: Scalar,
    bias_correction: bool = True,
    eps_inside_sqrt: bool = False,
    max_coeff: float = 10.0,
    min_coeff: float = 0.01,
    grad_scale: Scalar = 1.0,
    found_inf: torch.Tensor | None = None,
    out_lowp: torch.Tensor | None = None,
    backend: BackendName = "auto",
    policy: KernelPolicy | None = None,
) -> torch.Tensor:
    """One fused LAMB step treating the whole buffer as one tensor (one trust ratio); returns the
    trust ratio as a 0-dim device tensor (no sync). For per-parameter ratios over a flat buffer,
    pass the parameters' views to :func:`lamb_step_multi`.

    DeepSpeed FusedLamb arithmetic: ``u = m' / (sqrt(v') + eps) + weight_decay * p`` (or
    ``m' / sqrt(v' + eps) + ...`` with ``eps_inside_sqrt``), ``coeff = clamp(||p|| / ||u||, min_coeff,
    max_coeff)`` (1 when a norm is 0), ``p -= lr * sqrt(bc2) / bc1 * coeff * u``. The other arguments
    mean what they mean for :func:`adamw_step_flat`; the non-finite flag is all-or-nothing here.
    """
    return lamb_step_multi(
        [param],
        [grad],
        [exp_avg],
        [exp_avg_sq],
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        step=step,
        bias_correction=bias_correction,
        eps_inside_sqrt=eps_inside_sqrt,
        max_coeff=max_coeff,
        min_coeff=min_coeff,
        grad_scale=grad_scale,
        found_inf=found_inf,
        out_lowp=None if out_lowp is None else [out_lowp],
        backend=backend,
        policy=policy,
        _flat=True,
    )[0]


def lamb_step_multi(
    params: TensorList,
    grads: TensorList,
    exp_avgs: TensorList,
    exp_avg_sqs: TensorList,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: Scalar,
    bias_correction: bool = True,
    eps_inside_sqrt: bool = False,
    max_coeff: float = 10.0,
    min_coeff: float = 0.01,
    grad_scale: Scalar = 1.0,
    found_inf: torch.Tensor | None = None,
    out_lowp: TensorList | None = None,
    backend: BackendName = "auto",
    policy: KernelPolicy | None = None,
    _flat: bool = False,
) -> list[torch.Tensor]:
    """One fused LAMB step over parallel tensor lists (two launches per dtype group); returns each
    tensor's trust ratio as a 0-dim device tensor. See :func:`lamb_step_flat`."""
    op = "ds_kernels.lamb_step_flat" if _flat else "ds_kernels.lamb_step_multi"
    hyper = LambHyper(
        float(lr),
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
        bool(bias_correction),
        bool(eps_inside_sqrt),
        float(max_coeff),
        float(min_coeff),
    ).validate(op)
    cols, chosen = _prepare(
        op,
        {
            "params": params,
            "grads": grads,
            "exp_avgs": exp_avgs,
            "exp_avg_sqs": exp_avg_sqs,
            "out_lowp": out_lowp,
        },
        backend,
    )
    precision = Precision(grad_scale, found_inf)
    args = (cols["params"], cols["grads"], cols["exp_avgs"], cols["exp_avg_sqs"], cols["out_lowp"])
    if chosen == "torch":
        return lamb_torch(*args, hyper=hyper, step=step, precision=precision, op=op)
    return _triton("lamb").lamb_multi(
        *args, hyper=hyper, step=step, precision=precision, policy=policy or DEFAULT_POLICY, op=op
    )
