"""`deepspeed.utils`: the engine's logger and ``log_dist``; ZeRO-3 leaf-module flags; the ZeRO
parameter accessors (``safe_get_full_fp32_param`` & co.); ``RepeatingLoader``; ``zero_to_fp32``
(consolidation) and ``timer`` as submodules."""

from typing import Any

from deepspeed.utils.logging import log_dist, logger, print_dist

_LEAF = (
    "get_z3_leaf_modules",
    "set_z3_leaf_module",
    "set_z3_leaf_modules",
    "set_z3_leaf_modules_by_name",
    "set_z3_leaf_modules_by_suffix",
    "unset_z3_leaf_modules",
    "z3_leaf_module",
    "z3_leaf_parameter",
)
_PARAM_ACCESS = (
    "safe_get_full_fp32_param",
    "safe_get_full_grad",
    "safe_get_full_optimizer_state",
    "safe_get_local_fp32_param",
    "safe_get_local_grad",
    "safe_get_local_optimizer_state",
    "safe_set_full_fp32_param",
    "safe_set_full_grad",
    "safe_set_full_optimizer_state",
    "safe_set_local_fp32_param",
    "safe_set_local_grad",
    "safe_set_local_optimizer_state",
    "safe_update_full_grad_vectorized",
)
# name -> module holding it; torch is imported only when one is first used: `import deepspeed.utils` stays light
_LAZY = {
    **dict.fromkeys(_LEAF, "ds_zero.stage3.leaf"),
    **dict.fromkeys(_PARAM_ACCESS, "ds_zero.param_access"),
    "RepeatingLoader": "ds_engine.dataloader",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "timer":
        import importlib

        return importlib.import_module("deepspeed.utils.timer")
    raise AttributeError(f"module 'deepspeed.utils' has no attribute {name!r}")


__all__ = ["RepeatingLoader", "log_dist", "logger", "print_dist", *_LEAF, *_PARAM_ACCESS]
