"""``deepspeed.zero.Init`` validates its config with the engine's pydantic models (Note [zero.Init config]
in ds_zero.stage3.zero_init) and follows DeepSpeed's defaults (``offload_param.pin_memory`` true)."""

from __future__ import annotations

import json

import pytest
import torch

from ds_comm.testing import run_distributed


def test_deepspeed_zero_init_is_the_validating_subclass() -> None:
    import deepspeed
    from ds_engine.zero_init import Init
    from ds_zero.stage3 import Init as ZeroInit

    assert deepspeed.zero.Init is Init and issubclass(Init, ZeroInit)


def test_offload_param_pin_memory_defaults_to_true(tmp_path) -> None:
    from ds_engine.zero_init import init_config
    from ds_zero.stage3 import InitConfig

    cfg = {"bf16": {"enabled": True}, "zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(cfg))
    want = InitConfig(dtype=torch.bfloat16, offload_device="cpu", pin_memory=True)
    assert init_config(cfg) == init_config(str(path)) == want
    assert init_config(
        {"zero_optimization": {"offload_param": {"device": "cpu", "pin_memory": False}}}
    ) == InitConfig(offload_device="cpu", pin_memory=False)
    assert init_config({"fp16": {"enabled": True}}) == InitConfig(dtype=torch.float16)

    class HfStyle:  # transformers' HfDeepSpeedConfig keeps the dict in .config; from_pretrained calls
        # zero.Init before the Trainer fills the "auto" values zero.Init does not read
        config = {
            "train_batch_size": "auto",
            "gradient_clipping": "auto",
            "optimizer": {"type": "AdamW", "params": {"lr": "auto"}},
            "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": "auto"}},
            "bf16": {"enabled": True},
            "zero_optimization": {
                "stage": 3,
                "reduce_bucket_size": "auto",
                "offload_param": {"device": "cpu"},
                "stage3_prefetch_bucket_size": "auto",
            },
        }

    assert init_config(HfStyle()) == InitConfig(dtype=torch.bfloat16, offload_device="cpu", pin_memory=True)


@pytest.mark.faults
@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            {"zero_optimization": {"offload_param": {"device": "disk"}}},
            "'zero_optimization.offload_param.device'",
        ),
        (
            {"zero_optimization": {"offload_param": {"pin_memory": "maybe"}}},
            "'zero_optimization.offload_param.pin_memory'",
        ),
        ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, "fp16"),
    ],
)
def test_bad_configs_fail_as_initialize_fails(cfg, message) -> None:
    from ds_engine.config import DeepSpeedConfigError
    from ds_engine.zero_init import init_config

    with pytest.raises(DeepSpeedConfigError, match=message):
        init_config(cfg)


def _placement():
    import deepspeed

    cfg = {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}, "bf16": {"enabled": True}}
    with deepspeed.zero.Init(config_dict_or_path=cfg) as ctx:
        layer = torch.nn.Linear(4, 6)
    # pinning needs an accelerator; the validated flag reaches the context either way
    return (
        str(ctx.remote_device),
        ctx.dtype,
        ctx.pin_memory == torch.cuda.is_available(),
        str(layer.weight.ds_tensor.device),
        layer.weight.ds_tensor.dtype,
    )


@pytest.mark.timeout(120)
def test_init_places_partitions_as_the_validated_config_says() -> None:
    for remote, dtype, pinned_as_expected, device, shard_dtype in run_distributed(
        _placement, world_size=2, timeout=100
    ):
        assert (remote, dtype, pinned_as_expected, device, shard_dtype) == (
            "cpu",
            torch.bfloat16,
            True,
            "cpu",
            torch.bfloat16,
        )
