"""`deepspeed.runtime`: the engine's modules at DeepSpeed's paths (aliases of ds_engine and ds_zero).

Submodules resolve on attribute access too (`deepspeed.runtime.zero.partition_parameters` after a
plain `import deepspeed`), as clients that patch them expect.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = {
    "base_optimizer",
    "checkpoint_engine",
    "config",
    "dataloader",
    "engine",
    "lr_schedules",
    "utils",
    "zero",
    "activation_checkpointing",
}


__all__ = sorted(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"deepspeed.runtime.{name}")
    raise AttributeError(f"module 'deepspeed.runtime' has no attribute {name!r}")
