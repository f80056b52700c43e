"""The `deepspeed` meta-package: DeepSpeed's public names at DeepSpeed's paths, as thin aliases.

Nothing here has logic of its own. Names resolve lazily, so `import deepspeed` stays cheap and a
name whose package is not built yet fails only when it is used, with a clear message.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from deepspeed import _version_info
from deepspeed._version_info import __version__

# DeepSpeed's `deepspeed.version` is the version *string*; code written for this tree also imports
# `from deepspeed.version import __version__`. Both hold: the attribute is the string, and the module
# name resolves (through sys.modules, which never rebinds the attribute) to the version module.
version = __version__
sys.modules.setdefault("deepspeed.version", _version_info)

__git_hash__ = "[none]"  # as deepspeed.git_version_info.git_hash
__git_branch__ = "[none]"

# public name -> (module, attribute)
_ALIASES: dict[str, tuple[str, str]] = {
    "initialize": ("ds_engine", "initialize"),
    "add_config_arguments": ("ds_engine", "add_config_arguments"),
    "DeepSpeedEngine": ("ds_engine", "DeepSpeedEngine"),
    "DeepSpeedConfig": ("ds_engine", "DeepSpeedConfig"),
    "DeepSpeedConfigError": ("ds_engine", "DeepSpeedConfigError"),
    "init_distributed": ("ds_comm", "init_distributed"),
    "get_accelerator": ("ds_accel", "get_accelerator"),
    "tp_model_init": ("ds_parallel.tensor", "tp_model_init"),
}
_SUBMODULES = {
    "accelerator",
    "autotuning",
    "checkpoint",
    "checkpointing",
    "comm",
    "compression",
    "elasticity",
    "git_version_info",
    "launcher",
    "moe",
    "ops",
    "runtime",
    "utils",
    "zero",
}

__all__ = ["__version__", "version", *_ALIASES]


def __getattr__(name: str) -> Any:
    if name in _ALIASES:
        module_name, attr = _ALIASES[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"deepspeed.{name}")
    raise AttributeError(f"module 'deepspeed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ALIASES) | _SUBMODULES)
