"""ZeRO stage 3: parameters, gradients and optimizer state sharded; ``zero.Init``; ``GatheredParameters``.

Importing this package registers stage 3 with :func:`ds_zero.wrap`. The pieces, one concern each:
:mod:`.policy` (DeepSpeed's ``stage3_*`` knobs and what they do), :mod:`.plan` (the unit rule),
:mod:`.sharding` (FSDP2 ``fully_shard`` per unit), :mod:`.params` (masters over the shards),
:mod:`.hooks` (rank agreement, prefetch), :mod:`.leaf` (modules gathered as one piece),
:mod:`.trainer` (the composition), :mod:`.hpz` (ZeRO++ secondary groups), :mod:`.comm_log` (FSDP2's
collectives in ``ds_comm.comms_log``), :mod:`.zero_init`,
:mod:`.gathered`, :mod:`.external`, :mod:`.status`, :mod:`.shards` (layout helpers).

Note: [lazy] DTensor and FSDP2 take ~0.7 s to import, so nothing heavy is imported until stage 3 is
composed or one of the names below is used: ``import ds_zero`` stays as fast for stages 0-2.
"""

from __future__ import annotations

import importlib
from typing import Any

from ds_zero.entry import register_stage
from ds_zero.stage3.policy import Stage3Policy, Zero3Policy

_LAZY = {
    "DivergentPathError": "ds_zero.stage3.hooks",
    "GatheredParameters": "ds_zero.stage3.gathered",
    "full_state_dict": "ds_zero.stage3.gathered",
    "Init": "ds_zero.stage3.zero_init",
    "InitConfig": "ds_zero.stage3.zero_init",
    "Stage3Trainer": "ds_zero.stage3.trainer",
    "compose_stage3": "ds_zero.stage3.trainer",
    "consolidated_16bit_state_dict": "ds_zero.stage3.trainer",
    "is_zero3_param": "ds_zero.stage3.shards",
    "ZeroParamStatus": "ds_zero.stage3.status",
    "ZeroParamType": "ds_zero.stage3.status",
    "external_parameters": "ds_zero.stage3.external",
    "register_external_parameter": "ds_zero.stage3.external",
    "unregister_external_parameter": "ds_zero.stage3.external",
    **{
        name: "ds_zero.stage3.leaf"
        for name in (
            "get_z3_leaf_modules",
            "set_z3_leaf_module",
            "set_z3_leaf_modules",
            "set_z3_leaf_modules_by_name",
            "set_z3_leaf_modules_by_suffix",
            "unset_z3_leaf_modules",
            "z3_leaf_module",
            "z3_leaf_parameter",
        )
    },
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ds_zero.stage3' has no attribute {name!r}")


def _compose_stage3(**parts: Any) -> Any:
    """``compose_stage3`` (:mod:`ds_zero.stage3.trainer`), imported on first use (Note [lazy])."""
    from ds_zero.stage3.trainer import compose_stage3

    return compose_stage3(**parts)


register_stage(3, _compose_stage3)

__all__ = ["Stage3Policy", "Zero3Policy", *sorted(_LAZY)]
