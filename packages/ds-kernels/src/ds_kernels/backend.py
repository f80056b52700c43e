"""Which implementation runs a fused optimizer step, decided by the tensors' device.

Two backends exist:

* ``"triton"``: the Triton kernels in :mod:`ds_kernels._triton`, for CUDA (also ROCm builds of
  torch, whose device type is ``cuda``) and XPU tensors. CPU tensors take this backend only under
  ``TRITON_INTERPRET=1``, which must be set before ``triton`` is first imported; that is how the
  test suite runs the kernels without a GPU.
* ``"torch"``: PyTorch's own fused kernels (``torch._fused_adamw_`` and friends) plus ``_foreach``
  ops, for CPU tensors and as a fallback wherever Triton is not installed.

``"auto"`` picks Triton for accelerator tensors when ``triton`` can be imported and the torch
backend otherwise. Nothing here imports triton eagerly: :func:`triton_available` looks the module up
without importing it, and the kernels are imported on first use.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Literal

import torch

__all__ = [
    "BackendName",
    "UnsupportedKernelInput",
    "interpreter_active",
    "resolve_backend",
    "triton_available",
]

log = logging.getLogger("ds_kernels")

BackendName = Literal["auto", "triton", "torch"]

#: Device types whose tensors the Triton kernels address natively.
TRITON_DEVICE_TYPES = frozenset({"cuda", "xpu"})
#: Device types for which PyTorch ships fused optimizer kernels.
TORCH_FUSED_DEVICE_TYPES = frozenset({"cpu", "cuda", "xpu", "mps"})
#: Floating dtypes the Triton kernels load and store (math is always fp32).
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_fallback_logged: set[str] = set()


class UnsupportedKernelInput(TypeError):
    """A tensor's dtype, device or layout has no kernel; the message names the tensor and the fix."""


def triton_available() -> bool:
    """True when the ``triton`` module is installed (checked without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def interpreter_active() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set, so Triton kernels run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _device_of(tensors: Iterable[torch.Tensor]) -> torch.device | None:
    for t in tensors:
        return t.device
    return None


def resolve_backend(
    tensors: Sequence[torch.Tensor], *, backend: BackendName, op: str
) -> Literal["triton", "torch"]:
    """Pick the backend for a step over ``tensors`` (all on one device type), or raise.

    ``op`` names the public entry point in error messages.
    """
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"{op}: backend={backend!r}; expected 'auto', 'triton' or 'torch'")
    kinds = {t.device.type for t in tensors}
    if len(kinds) > 1:
        raise ValueError(f"{op}: one step cannot mix device types {sorted(kinds)}; split the lists by device")
    device = _device_of(tensors)
    if device is None:
        return "torch" if backend == "auto" else backend
    kind = device.type
    if backend == "auto":
        if kind in TRITON_DEVICE_TYPES and triton_available():
            return "triton"
        if kind in TRITON_DEVICE_TYPES and kind not in _fallback_logged:
            _fallback_logged.add(kind)
            log.info("ds_kernels: triton is not installed; %s steps use torch's fused kernels", kind)
        backend = "torch"
    if backend == "triton":
        _check_triton_device(device, op=op)
        return "triton"
    if kind not in TORCH_FUSED_DEVICE_TYPES:
        raise UnsupportedKernelInput(
            f"{op}: no fused optimizer kernel for device {device} "
            f"(Triton runs on {sorted(TRITON_DEVICE_TYPES)}, torch's fused kernels on "
            f"{sorted(TORCH_FUSED_DEVICE_TYPES)})"
        )
    return "torch"


def _check_triton_device(device: torch.device, *, op: str) -> None:
    if not triton_available():
        raise UnsupportedKernelInput(
            f"{op}: backend='triton' needs the triton package (pip install 'ds-kernels[triton]')"
        )
    if device.type in TRITON_DEVICE_TYPES:
        return
    if device.type == "cpu" and interpreter_active():
        return
    hint = " CPU tensors run Triton kernels only under TRITON_INTERPRET=1." if device.type == "cpu" else ""
    raise UnsupportedKernelInput(
        f"{op}: the Triton backend cannot address {device} tensors.{hint} "
        "Use backend='auto' or 'torch' for this device."
    )
