"""Elastic training's batch arithmetic (DeepSpeed's ``elasticity`` section), see Note [elastic batch]."""

from ds_engine.elasticity.arithmetic import (
    HCN_LIST,
    candidate_batch_sizes,
    compatible_gpus_v01,
    compatible_gpus_v02,
    valid_world_sizes,
)
from ds_engine.elasticity.batch import elastic_batch_sizes
from ds_engine.elasticity.compute import (
    DEEPSPEED_ELASTICITY_CONFIG,
    LATEST_ELASTICITY_VERSION,
    MINIMUM_DEEPSPEED_VERSION,
    ElasticPlan,
    compute_elastic_config,
    elasticity_enabled,
    ensure_immutable_elastic_config,
    parse_elastic_section,
    plan_elastic_batch,
)
from ds_engine.elasticity.errors import (
    ElasticityConfigError,
    ElasticityError,
    ElasticityIncompatibleWorldSize,
)

__all__ = [
    "DEEPSPEED_ELASTICITY_CONFIG",
    "HCN_LIST",
    "LATEST_ELASTICITY_VERSION",
    "MINIMUM_DEEPSPEED_VERSION",
    "ElasticPlan",
    "ElasticityConfigError",
    "ElasticityError",
    "ElasticityIncompatibleWorldSize",
    "candidate_batch_sizes",
    "compatible_gpus_v01",
    "compatible_gpus_v02",
    "compute_elastic_config",
    "elastic_batch_sizes",
    "elasticity_enabled",
    "ensure_immutable_elastic_config",
    "parse_elastic_section",
    "plan_elastic_batch",
    "valid_world_sizes",
]
