"""The accelerator registry: names to classes, auto-detection, and the process-wide choice.

Detection follows DeepSpeed's documented order: ``DS_ACCELERATOR`` when set, otherwise XPU, NPU, HPU,
MPS, then CUDA (ROCm included), and the CPU when no device runtime is usable.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

from ds_accel.accelerators.base import Accelerator

# name -> (module, class). Classes are imported lazily so that naming one costs nothing.
_REGISTRY: dict[str, tuple[str, str]] = {
    "cuda": ("ds_accel.accelerators.cuda", "CUDAAccelerator"),
    "cpu": ("ds_accel.accelerators.cpu", "CPUAccelerator"),
    "xpu": ("ds_accel.accelerators.vendors", "XPUAccelerator"),
    "xpu.external": ("ds_accel.accelerators.vendors", "XPUAccelerator"),
    "hpu": ("ds_accel.accelerators.vendors", "HPUAccelerator"),
    "npu": ("ds_accel.accelerators.vendors", "NPUAccelerator"),
    "mps": ("ds_accel.accelerators.vendors", "MPSAccelerator"),
}

_current: Accelerator | None = None


class AcceleratorError(RuntimeError):
    """An accelerator was asked for that is unknown or whose runtime is unusable here."""


def available_names() -> list[str]:
    """Every name ``DS_ACCELERATOR`` accepts."""
    return list(_REGISTRY)


def register(name: str, module: str, class_name: str) -> None:
    """Add (or replace) an accelerator kind, e.g. from an out-of-tree plugin."""
    _REGISTRY[name] = (module, class_name)


def _load(name: str) -> Accelerator:
    if name not in _REGISTRY:
        raise AcceleratorError(
            f"DS_ACCELERATOR={name!r} is not a known accelerator; valid choices: {', '.join(_REGISTRY)}"
        )
    module_name, class_name = _REGISTRY[name]
    module = importlib.import_module(module_name)
    try:
        accel = getattr(module, class_name)()
    except ImportError as exc:
        raise AcceleratorError(
            f"accelerator {name!r} needs {exc.name or 'its vendor runtime'}, which is not installed "
            f"(valid choices: {', '.join(_REGISTRY)})"
        ) from exc
    if name != "cpu" and not accel.is_available():
        raise AcceleratorError(f"accelerator {name!r} was requested but its runtime reports no usable device")
    return accel


def _torch_has(kind: str) -> bool:
    import torch

    mod = getattr(torch, kind, None)
    try:
        return bool(mod is not None and mod.is_available())
    except RuntimeError:
        return False


def _spec(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# Auto-detection candidates in order: (name, cheap "is it usable here" check).
_DETECTION_ORDER: list[tuple[str, Callable[[], bool]]] = [
    ("xpu", lambda: _torch_has("xpu")),
    ("npu", lambda: _spec("torch_npu")),
    ("hpu", lambda: _spec("habana_frameworks")),
    ("mps", lambda: _torch_has("mps")),
    ("cuda", lambda: _torch_has("cuda")),
]


def detect() -> Accelerator:
    """Build the accelerator for this process: the override if set, else the first usable runtime."""
    forced = os.environ.get("DS_ACCELERATOR")
    if forced:
        return _load(forced)
    for name, usable in _DETECTION_ORDER:
        if not usable():
            continue
        try:
            return _load(name)
        except AcceleratorError:
            continue  # installed but not usable (no device): try the next kind, as the probe does.
    return _load("cpu")


def get_accelerator() -> Accelerator:
    """The process-wide accelerator, detected on first use."""
    global _current
    if _current is None:
        if importlib.util.find_spec("torch") is None:  # a launcher-only install (ds-launch) has no torch
            raise AcceleratorError(
                "the device API of ds_accel needs torch, which is not installed here "
                "(pip install torch, or 'ds-accel[torch]'); the launcher needs only ds_accel.probe"
            )
        _current = detect()
    return _current


def set_accelerator(accel: Accelerator) -> None:
    """Replace the process-wide accelerator (tests, plugins, or a user who knows better)."""
    global _current
    if not isinstance(accel, Accelerator):
        raise TypeError(f"set_accelerator expects an Accelerator, got {type(accel).__name__}")
    _current = accel


def reset_accelerator() -> None:
    """Forget the current choice so the next ``get_accelerator()`` detects again."""
    global _current
    _current = None


def is_current_accelerator_supported() -> bool:
    """Whether the process-wide accelerator is one of the registered kinds (DeepSpeed's check of the
    same name: an out-of-tree accelerator handed to ``set_accelerator`` without ``register`` is not)."""
    return get_accelerator().name in _REGISTRY
