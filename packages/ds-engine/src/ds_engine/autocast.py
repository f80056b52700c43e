"""The ``torch_autocast`` section: the model stays fp32 and its forward runs under ``torch.autocast``.

Note: [torch autocast] With ``torch_autocast.enabled`` the engine keeps fp32 parameters (they are the
optimizer's weights; no master copies) and runs forward inside :func:`autocast_if_enabled`, so ops
that autocast lists run in the configured dtype. The parameters of the "lower-precision-safe" modules
(``lower_precision_safe_modules``; default ``Linear`` and ``Conv1d/2d/3d``) are tagged with the
autocast dtype as their ``comm_dtype`` attribute, DeepSpeed's marker that their gradients may be
communicated in that dtype. Here gradients are still reduced in fp32 (more exact, twice the bytes of
a bf16 reduction); the tag is kept so clients that read it see DeepSpeed's value. With an fp16 autocast
dtype the loss is scaled dynamically, as ``torch.amp.GradScaler`` does (start 2**16, halve on every
overflow, double after 2000 clean steps), at every ZeRO stage.

Where the client already runs under ``torch.autocast``: an engine with ``torch_autocast`` enabled
switches to its own dtype; an engine without it turns autocast off inside forward, since its
fp16/bf16 sections already decide the precision (DeepSpeed's rule, logged once).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ds_accel import get_accelerator

if TYPE_CHECKING:
    from ds_engine.engine import DeepSpeedEngine

logger = logging.getLogger("ds_engine")

PARAM_COMM_DTYPE_ATTR_NAME = "comm_dtype"
LOWER_PRECISION_SAFE_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

_DTYPES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "torch.float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "torch.bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "torch.float32": torch.float32,
    "int8": torch.int8,
    "torch.int8": torch.int8,
}
_state: dict[str, Any] = {"initialized": False, "dtype": None, "warned_nested": False}


def autocast_dtype_of(name: str | None) -> torch.dtype | None:
    """The torch dtype a ``torch_autocast.dtype`` spelling means (None: the device's autocast default)."""
    return None if name is None else _DTYPES[name]


def default_lower_precision_modules() -> list[str]:
    """The default lower-precision-safe module classes, as dotted names."""
    return [f"{cls.__module__}.{cls.__name__}" for cls in LOWER_PRECISION_SAFE_MODULES]


def _module_classes(names: Sequence[str] | None) -> tuple[type, ...]:
    if names is None:
        return LOWER_PRECISION_SAFE_MODULES
    classes = []
    for name in names:
        module_name, _, class_name = name.rpartition(".")
        try:
            classes.append(getattr(importlib.import_module(module_name), class_name))
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(
                f"'torch_autocast.lower_precision_safe_modules': cannot import {name!r} ({exc})"
            ) from None
    return tuple(classes)


def init_autocast_params(
    module: nn.Module, dtype: torch.dtype | None, lower_precision_safe_modules: Sequence[str] | None
) -> None:
    """Tag the parameters of the lower-precision-safe modules with ``comm_dtype`` (Note [torch autocast])."""
    classes = _module_classes(lower_precision_safe_modules)
    tag = dtype if dtype is not None else get_autocast_device_default()
    for sub in module.modules():
        if type(sub) in classes:
            for param in sub.parameters(recurse=False):
                setattr(param, PARAM_COMM_DTYPE_ATTR_NAME, tag)
    _state["initialized"], _state["dtype"] = True, tag


def get_autocast_device_default() -> torch.dtype:
    """The dtype ``torch.autocast`` picks on this accelerator when none is given."""
    return torch.get_autocast_dtype(_device_type())


def is_autocast_initialized() -> bool:
    """Whether an engine with ``torch_autocast`` enabled was built in this process."""
    return bool(_state["initialized"])


def get_autocast_dtype() -> torch.dtype | None:
    """The autocast dtype of the last engine built with ``torch_autocast`` enabled."""
    return _state["dtype"]


def has_comm_dtype(param: torch.Tensor) -> bool:
    """Whether ``param`` carries a ``comm_dtype`` tag."""
    return hasattr(param, PARAM_COMM_DTYPE_ATTR_NAME)


def get_comm_dtype(param: torch.Tensor) -> torch.dtype:
    """The dtype ``param``'s gradient may be communicated in (its own dtype when untagged)."""
    return getattr(param, PARAM_COMM_DTYPE_ATTR_NAME, param.dtype)


def get_all_comm_dtypes(params: Any) -> set[torch.dtype]:
    """Every communication dtype among ``params``."""
    return {get_comm_dtype(p) for p in params}


def sort_dtypes(dtypes: Any) -> list[torch.dtype]:
    """``dtypes`` in a stable order (by name)."""
    return sorted(dtypes, key=str)


def _device_type() -> str:
    name = get_accelerator().device_name()
    return name if name in ("cuda", "cpu", "xpu", "hpu", "mps", "npu") else "cpu"


@contextmanager
def autocast_if_enabled(engine: DeepSpeedEngine) -> Iterator[None]:
    """``torch.autocast`` as the engine's ``torch_autocast`` section says (see the module doc)."""
    device = _device_type()
    enabled = engine.torch_autocast_enabled()
    if enabled:
        if torch.is_autocast_enabled(device):
            _warn_nested_once(
                "torch.autocast is already on outside the engine; the torch_autocast section's dtype "
                "applies inside it"
            )
        with torch.autocast(device_type=device, dtype=engine.torch_autocast_dtype(), enabled=True):
            yield
    elif torch.is_autocast_enabled(device):
        _warn_nested_once(
            "torch.autocast is on outside the engine but its torch_autocast section is off: forward "
            "runs without autocast, in the precision the fp16/bf16 sections choose"
        )
        with torch.autocast(device_type=device, enabled=False):
            yield
    else:
        yield


def _warn_nested_once(message: str) -> None:
    if not _state["warned_nested"]:
        _state["warned_nested"] = True
        logger.warning(message)
