"""The runtime side of elasticity: the batch triple an enabled ``elasticity`` section imposes.

``DeepSpeedConfig`` calls :func:`elastic_batch_sizes` instead of plain batch reconciliation when the
section is enabled: the global batch comes from Note [elastic batch], the micro batch is the largest
allowed one that divides each rank's share, and accumulation makes up the rest. So a job restarted at
another valid world size keeps ``train_batch_size``, and an invalid world size fails before training.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ds_engine.config.batch import BatchSizes, reconcile_batch
from ds_engine.config.features import ElasticityConfig
from ds_engine.elasticity.compute import ELASTICITY, ensure_immutable_elastic_config, plan_elastic_batch
from ds_engine.elasticity.errors import ElasticityConfigError

logger = logging.getLogger("ds_engine")

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def elastic_batch_sizes(
    *, config: ElasticityConfig, ds_config: Mapping[str, Any], world_size: int
) -> BatchSizes:
    """The batch sizes for ``world_size`` data-parallel ranks under the enabled section ``config``.

    ``ds_config`` is the whole config (``"auto"`` already dropped): batch keys given outside the section are
    an error unless ``ignore_non_elastic_batch_info``, in which case they are overridden with a warning.
    """
    given = [key for key in BATCH_KEYS if ds_config.get(key) is not None]
    if given and not config.ignore_non_elastic_batch_info:
        raise ElasticityConfigError(
            f"batch keys {', '.join(given)} are set, but elastic training is enabled and chooses them itself; "
            "remove them, or set 'elasticity.ignore_non_elastic_batch_info': true to have them ignored"
        )
    ensure_immutable_elastic_config(dict(ds_config.get(ELASTICITY, {})))
    plan = plan_elastic_batch(config, world_size=world_size)
    assert plan.micro_batch_size is not None
    accumulation = plan.train_batch_size // (plan.micro_batch_size * world_size)
    if given:
        logger.warning(
            "elasticity overrides %s: train_batch_size=%d, micro batch=%d, accumulation=%d",
            ", ".join(given),
            plan.train_batch_size,
            plan.micro_batch_size,
            accumulation,
        )
    return reconcile_batch(
        train_batch_size=plan.train_batch_size,
        micro_batch_per_gpu=plan.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        dp_world_size=world_size,
    )
