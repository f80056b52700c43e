"""``deepspeed.elasticity.config``: the elasticity section model and errors, as thin aliases."""

from ds_engine.config.features import ElasticityConfig
from ds_engine.elasticity import ElasticityConfigError, ElasticityError, ElasticityIncompatibleWorldSize

__all__ = ["ElasticityConfig", "ElasticityConfigError", "ElasticityError", "ElasticityIncompatibleWorldSize"]
