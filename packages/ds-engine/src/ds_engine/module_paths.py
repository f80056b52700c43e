"""Getting and replacing submodules by dotted name (DeepSpeed-Chat's LoRA code imports these from
``deepspeed.compression.helper``)."""

from __future__ import annotations

from typing import Any

from torch import nn


def recursive_getattr(model: nn.Module, module_name: str) -> Any:
    """The attribute of ``model`` at the dotted path ``module_name`` (``"layers.0.attn"``)."""
    target: Any = model
    for part in module_name.split("."):
        target = getattr(target, part)
    return target


def recursive_setattr(model: nn.Module, module_name: str, module: Any) -> None:
    """Replace the attribute of ``model`` at the dotted path ``module_name`` by ``module``."""
    parent_path, _, name = module_name.rpartition(".")
    parent = recursive_getattr(model, parent_path) if parent_path else model
    setattr(parent, name, module)
