"""ds_zero: ZeRO sharding, mixed precision, offload and sharded state.

One public entry, :func:`wrap`, turns a model and its optimizer into a trainer for the stage a
:class:`ZeroPolicy` names; stages are compositions of small parts (Note [stages are compositions]).
"""

import importlib
from typing import Any

from ds_zero import stage3 as _stage3  # noqa: E402,F401 - registers stage 3 with `wrap` (lazily)
from ds_zero import stage12 as _stage12  # noqa: E402,F401 - registers stages 1 and 2 with `wrap`
from ds_zero._version import __version__
from ds_zero.base_optimizer import DeepSpeedOptimizer, ZeROOptimizer
from ds_zero.entry import StageNotAvailable, available_stages, register_stage, wrap
from ds_zero.loss_scaler import DynamicLossScaler, LossScaleError, StaticLossScaler, make_loss_scaler
from ds_zero.policy import (
    LossScalePolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    ReducePolicy,
    ZenFlowPolicy,
    ZeroPolicy,
)
from ds_zero.stage3.policy import Stage3Policy, Zero3Policy
from ds_zero.trainer import Trainer, ZeroTrainer

# Stage-3 names the engine uses, imported on first use (Note [lazy] in ds_zero.stage3).
_LAZY = {
    "GatheredParameters": "ds_zero.stage3.gathered",
    "Init": "ds_zero.stage3.zero_init",
    "InitConfig": "ds_zero.stage3.zero_init",
    "apply_leaf_config": "ds_zero.stage3.leaf",
    "shard_for_inference": "ds_zero.stage3.inference",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ds_zero' has no attribute {name!r}")


__all__ = [
    "DeepSpeedOptimizer",
    "GatheredParameters",
    "Init",
    "InitConfig",
    "Stage3Policy",
    "Trainer",
    "Zero3Policy",
    "apply_leaf_config",
    "shard_for_inference",
    "DynamicLossScaler",
    "LossScaleError",
    "LossScalePolicy",
    "MixedPrecisionPolicy",
    "OffloadPolicy",
    "ReducePolicy",
    "StageNotAvailable",
    "StaticLossScaler",
    "ZeROOptimizer",
    "ZenFlowPolicy",
    "ZeroPolicy",
    "ZeroTrainer",
    "__version__",
    "available_stages",
    "make_loss_scaler",
    "register_stage",
    "wrap",
]
