"""``deepspeed.elasticity.elasticity``: DeepSpeed's module path for the elasticity functions (aliases)."""

from ds_engine.elasticity import (
    HCN_LIST,
    compute_elastic_config,
    elasticity_enabled,
    ensure_immutable_elastic_config,
)

__all__ = ["HCN_LIST", "compute_elastic_config", "elasticity_enabled", "ensure_immutable_elastic_config"]
