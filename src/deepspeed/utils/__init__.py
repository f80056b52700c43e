"""`deepspeed.utils`: the engine's logger and ``log_dist``; ZeRO-3 leaf-module flags; ``zero_to_fp32``
(consolidation) as a submodule."""

from typing import Any

from deepspeed.utils.logging import log_dist, logger, print_dist

_LEAF = ("get_z3_leaf_modules", "set_z3_leaf_module", "set_z3_leaf_modules", "set_z3_leaf_modules_by_name",
         "set_z3_leaf_modules_by_suffix", "unset_z3_leaf_modules", "z3_leaf_module", "z3_leaf_parameter")


def __getattr__(name: str) -> Any:
    # torch is imported only when a leaf helper is first used: `import deepspeed.utils` stays light
    if name in _LEAF:
        from ds_zero.stage3 import leaf

        return getattr(leaf, name)
    raise AttributeError(f"module 'deepspeed.utils' has no attribute {name!r}")


__all__ = ["log_dist", "logger", "print_dist", *_LEAF]
