"""Elasticity errors, with DeepSpeed's names and hierarchy (all of them are config errors here too)."""

from __future__ import annotations

from ds_engine.config.errors import DeepSpeedConfigError


class ElasticityError(DeepSpeedConfigError):
    """Base of every elasticity error."""


class ElasticityConfigError(ElasticityError):
    """The ``elasticity`` section is missing, disabled where it must be enabled, or invalid."""


class ElasticityIncompatibleWorldSize(ElasticityError):
    """The current (data-parallel) world size is not one the elastic config allows."""
