"""``deepspeed.elasticity``: elastic batch-size arithmetic, as thin aliases of :mod:`ds_engine.elasticity`."""

from deepspeed.elasticity import config  # noqa: F401  (deepspeed.elasticity.config.ElasticityError)
from ds_engine.elasticity import (
    DEEPSPEED_ELASTICITY_CONFIG,
    LATEST_ELASTICITY_VERSION,
    MINIMUM_DEEPSPEED_VERSION,
    ElasticityConfigError,
    ElasticityError,
    ElasticityIncompatibleWorldSize,
    compute_elastic_config,
    elasticity_enabled,
    ensure_immutable_elastic_config,
)

ELASTICITY = "elasticity"
ENABLED = "enabled"
ENABLED_DEFAULT = False

__all__ = [
    "DEEPSPEED_ELASTICITY_CONFIG",
    "ELASTICITY",
    "ENABLED",
    "ENABLED_DEFAULT",
    "LATEST_ELASTICITY_VERSION",
    "MINIMUM_DEEPSPEED_VERSION",
    "ElasticityConfigError",
    "ElasticityError",
    "ElasticityIncompatibleWorldSize",
    "compute_elastic_config",
    "elasticity_enabled",
    "ensure_immutable_elastic_config",
]
