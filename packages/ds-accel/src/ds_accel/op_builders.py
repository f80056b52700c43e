"""Where an accelerator finds DeepSpeed's op builders (``get_accelerator().get_op_builder(name)``).

DeepSpeed compiles its ops on demand; this project has no compile step, so a "builder" only says
whether an op's Python/Triton implementation is usable here and hands that implementation out. The
builders themselves live with the ops (:mod:`ds_kernels.op_builder`); ds-accel does not depend on
ds-kernels, so the module is named here and imported on first use, and a missing module means "no
builders" (``None``), as DeepSpeed answers for an op name it does not know.
"""

from __future__ import annotations

import importlib
from typing import Any

#: The module holding the builder classes; an out-of-tree accelerator may point it elsewhere.
_builder_module = "ds_kernels.op_builder"


def op_builder_dir() -> str:
    """The importable module that holds the op builder classes."""
    return _builder_module


def set_op_builder_module(module: str) -> None:
    """Make :func:`get_op_builder` look up builder classes in ``module`` (an importable name)."""
    global _builder_module
    _builder_module = module


def get_op_builder(class_name: str) -> type | None:
    """The builder class called ``class_name`` (e.g. ``"CPUAdamBuilder"``), or None if there is none."""
    if not class_name.endswith("Builder"):
        return None
    try:
        module = importlib.import_module(_builder_module)
    except ImportError:
        return None
    builder = getattr(module, class_name, None)
    return builder if isinstance(builder, type) else None


def create_op_builder(class_name: str) -> Any:
    """An instance of the builder called ``class_name``, or None if there is none."""
    builder = get_op_builder(class_name)
    return None if builder is None else builder()
