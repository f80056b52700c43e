"""``optimizer.params``: the parameters most optimizers share are checked at config time, naming the key."""

from __future__ import annotations

import pytest
import torch

from ds_engine.config import DeepSpeedConfig
from ds_engine.config.errors import DeepSpeedConfigError
from ds_engine.config.optim import OptimizerConfig

WARMUP = {"type": "WarmupLR", "params": {"warmup_num_steps": 2}}


def _config(params: dict, **extra) -> DeepSpeedConfig:
    return DeepSpeedConfig(
        {"train_batch_size": 2, "optimizer": {"type": "Adam", "params": params}, **extra}, world_size=1
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"lr": 1e-3, "betas": [0.9]},
            "'optimizer.params.betas': expected two numbers in [0, 1), like [0.9, 0.999] (got [0.9])",
        ),
        ({"betas": [0.9, 1.0]}, "'optimizer.params.betas': expected two numbers in [0, 1)"),
        ({"betas": "0.9,0.99"}, "'optimizer.params.betas': expected two numbers"),
        ({"lr": "fast"}, "'optimizer.params.lr': expected a number >= 0 (got 'fast')"),
        ({"lr": -1}, "'optimizer.params.lr': expected a number >= 0 (got -1)"),
        ({"lr": True}, "'optimizer.params.lr': expected a number >= 0 (got True)"),
        ({"lr": float("nan")}, "'optimizer.params.lr': expected a number >= 0 (got nan)"),
        ({"lr": 1e-3, "eps": 0}, "'optimizer.params.eps': expected a number > 0 (got 0)"),
        (
            {"lr": 1e-3, "weight_decay": -0.01},
            "'optimizer.params.weight_decay': expected a number >= 0 (got -0.01)",
        ),
    ],
)
def test_bad_common_params_name_the_key(params: dict, message: str):
    with pytest.raises(DeepSpeedConfigError) as err:
        _config(params)
    assert message in str(err.value)


def test_negative_lr_is_refused_with_a_scheduler_too():
    with pytest.raises(
        DeepSpeedConfigError, match=r"'optimizer\.params\.lr': expected a number >= 0 \(got -1\)"
    ):
        _config({"lr": -1}, scheduler=WARMUP)


def test_valid_and_unknown_params_pass_through():
    params = {"lr": 0, "betas": [0.8, 0.0], "eps": 1e-8, "weight_decay": 0.0, "amsgrad": True, "foo": "bar"}
    assert _config(params).optimizer.params == params
    tensor_lr = OptimizerConfig(type="AdamW", params={"lr": torch.tensor(1e-3)})
    assert float(tensor_lr.params["lr"]) == pytest.approx(1e-3)
