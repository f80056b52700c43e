"""DeepSpeed's config as pydantic models: one model per section, one base (Note [config-base])."""

from ds_engine.config.auto import resolve_auto
from ds_engine.config.batch import BatchSizes, reconcile_batch
from ds_engine.config.errors import DeepSpeedConfigError
from ds_engine.config.loading import choose_config_source, read_config_source
from ds_engine.config.root import DeepSpeedConfig, DeepSpeedConfigModel, unsupported_features

__all__ = [
    "BatchSizes",
    "DeepSpeedConfig",
    "DeepSpeedConfigError",
    "DeepSpeedConfigModel",
    "choose_config_source",
    "read_config_source",
    "reconcile_batch",
    "resolve_auto",
    "unsupported_features",
]
