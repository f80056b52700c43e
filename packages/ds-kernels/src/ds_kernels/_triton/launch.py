"""Host-side plumbing shared by the Triton launchers: dtype mapping, device guards, scalar args."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import triton.language as tl

from ..backend import TRITON_DTYPES, UnsupportedKernelInput
from ..hyper import Precision, Scalar, device_scalar, host_scalar
from ..tensor_lists import LaunchGroup

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
#: ln(beta) stand-in for beta == 0 (beta**step == 0); finite so that step * ln_beta stays finite.
_LN_ZERO = -1e30


def tl_dtype(dtype: torch.dtype, *, op: str, role: str, device: torch.device) -> tl.dtype:
    """The Triton dtype for ``dtype``, or a clear error naming the role, dtype and device."""
    try:
        return _TL_DTYPES[dtype]
    except KeyError:
        names = ", ".join(str(d).removeprefix("torch.") for d in TRITON_DTYPES)
        raise UnsupportedKernelInput(
            f"{op}: {role} has dtype {dtype} on {device}; the Triton kernels take {names}"
        ) from None


def check_dtypes(op: str, columns: dict[str, torch.Tensor | None]) -> None:
    """Reject any tensor of a flat step whose dtype the kernels cannot load or store."""
    for role, t in columns.items():
        if t is not None:
            tl_dtype(t.dtype, op=op, role=f"{role}[0]", device=t.device)


def group_tl_dtypes(op: str, roles: Sequence[str], group: LaunchGroup) -> list[tl.dtype | None]:
    """Triton dtypes of a launch group's columns (None for an absent one), or a clear error naming
    the group's first tensor."""
    return [
        None if dt is None else tl_dtype(dt, op=op, role=f"{role}[{group.rows[0]}]", device=group.device)
        for role, dt in zip(roles, group.dtypes)
    ]


@contextlib.contextmanager
def device_guard(device: torch.device) -> Iterator[None]:
    """Make ``device`` current so Triton launches on its stream."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    elif device.type == "xpu":
        with torch.xpu.device(device):
            yield
    else:
        yield


def ln_beta(beta: float) -> float:
    """ln(beta) for the in-kernel bias correction (see ``common.one_minus_pow``)."""
    return math.log(beta) if beta > 0 else _LN_ZERO


@dataclass(frozen=True)
class DeviceScalars:
    """Pointer arguments for the values a kernel may read from device memory.

    A tensor that is not used is replaced by ``dummy`` (any tensor of the launch's device); the
    matching constexpr flag keeps the kernel from dereferencing it.
    """

    flag: torch.Tensor
    step: torch.Tensor
    scale: torch.Tensor
    has_flag: bool
    step_on_device: bool
    scale_on_device: bool
    host_step: float
    host_inv_scale: float


def device_scalars(
    op: str, *, step: Scalar, precision: Precision, device: torch.device, dummy: torch.Tensor
) -> DeviceScalars:
    """Sort ``step``, ``grad_scale`` and ``found_inf`` into host values and device pointers."""
    flag = precision.found_inf
    if flag is not None and (flag.numel() != 1 or flag.dtype != torch.float32 or flag.device != device):
        raise UnsupportedKernelInput(
            f"{op}: found_inf must be a one-element float32 tensor on {device}; got "
            f"{tuple(flag.shape)} {flag.dtype} on {flag.device}"
        )
    step_dev = device_scalar(step, device)
    scale_dev = device_scalar(precision.grad_scale, device)
    host_step = host_scalar(step, device) if step_dev is None else 1.0
    host_scale = host_scalar(precision.grad_scale, device) if scale_dev is None else 1.0
    # host_scalar is None only for a tensor on this accelerator, i.e. exactly when the device_scalar is set
    assert host_step is not None and host_scale is not None
    if host_scale == 0 or not math.isfinite(host_scale):
        raise ValueError(f"{op}: grad_scale={host_scale!r}; expected a finite non-zero loss scale")
    return DeviceScalars(
        flag=dummy if flag is None else flag,
        step=dummy if step_dev is None else step_dev,
        scale=dummy if scale_dev is None else scale_dev,
        has_flag=flag is not None,
        step_on_device=step_dev is not None,
        scale_on_device=scale_dev is not None,
        host_step=host_step,
        host_inv_scale=1.0 / host_scale,
    )
