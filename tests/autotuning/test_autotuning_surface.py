"""What the launcher and the engine must agree on, and DeepSpeed's module paths for these features."""

from __future__ import annotations

import deepspeed
from ds_engine.config.features import AutotuningConfig
from ds_engine.config.root import DeepSpeedConfigModel
from ds_launch.autotuning.settings import TuningSettings


def test_launcher_and_engine_validate_autotuning_with_one_model():
    # One definition: the engine's section is the launcher's model, not a copy kept equal by hand.
    assert TuningSettings is AutotuningConfig
    assert DeepSpeedConfigModel.model_fields["autotuning"].annotation is AutotuningConfig
    assert AutotuningConfig.__module__ == "ds_launch.autotuning_config"


def test_deepspeed_paths():
    from deepspeed.autotuning import Autotuner, run_autotuning  # noqa: F401
    from deepspeed.autotuning.config import DeepSpeedAutotuningConfig
    from deepspeed.elasticity import compute_elastic_config, elasticity_enabled  # noqa: F401
    from deepspeed.elasticity.config import (
        ElasticityConfigError,
        ElasticityError,
        ElasticityIncompatibleWorldSize,
    )

    assert issubclass(ElasticityConfigError, ElasticityError) and issubclass(
        ElasticityIncompatibleWorldSize, ElasticityError
    )
    assert DeepSpeedAutotuningConfig is AutotuningConfig
    config = {
        "elasticity": {
            "enabled": True,
            "max_train_batch_size": 2000,
            "micro_batch_sizes": [2, 4, 6],
            "min_gpus": 1,
            "max_gpus": 10000,
            "version": 0.1,
        }
    }
    batch, valid = compute_elastic_config(config, deepspeed.__version__)
    assert batch <= 2000 and all(batch % g == 0 for g in valid) and 1 in valid
