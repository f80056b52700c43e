"""``data_types.grad_accum_dtype`` is followed at every ZeRO stage (Note [gradient dtypes] in
ds_zero.dtypes): under bf16 with fp32 accumulation, micro-batch gradients too small to change a bf16
sum still count. Before, stages 1 and 2 accumulated in bf16 and only warned."""

from __future__ import annotations

import pytest
import torch

from ds_comm.testing import run_distributed

# One weight, starting at 0; micro-batch k's loss is c_k * w, so its gradient is c_k / gas (the engine
# averages micro-batches). 1/4 then three times 2^-11: a bf16 sum stays 1/4 (2^-11 is a quarter of
# bf16's spacing there), an fp32 sum is 1/4 + 3 * 2^-11. All values are exact in bf16.
GAS = 4
COEFFS = [1.0, 2.0**-9, 2.0**-9, 2.0**-9]
FP32_SUM = 0.25 + 3 * 2.0**-11


def _step(stage: int, accum: str | None, persistence: int | None = None) -> float:
    import deepspeed

    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": GAS,
        "bf16": {"enabled": True},
        "communication_data_type": "fp32",  # the sum itself adds no rounding: only accumulation does
        "optimizer": {"type": "SGD", "params": {"lr": 1.0}},
        "zero_optimization": {"stage": stage},
    }
    if persistence is not None:  # 0: the weight goes into an FSDP2 unit, not the persistent set
        config["zero_optimization"]["stage3_param_persistence_threshold"] = persistence
    if accum is not None:
        config["data_types"] = {"grad_accum_dtype": accum}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    for c in COEFFS:
        x = torch.full((1, 1), c, dtype=torch.bfloat16)
        engine.backward(engine(x).sum())
        engine.step()
    return float(engine.get_global_grad_norm())


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("stage", "persistence"), [(0, None), (1, None), (2, None), (3, None), (3, 0)])
def test_fp32_accumulation_under_bf16_at_every_stage(stage: int, persistence: int | None) -> None:
    norms = run_distributed(_step, 2, 200, args=(stage, "fp32", persistence))
    assert norms == [pytest.approx(FP32_SUM, abs=0, rel=1e-7)] * 2


@pytest.mark.timeout(240)
@pytest.mark.parametrize("stage", [1, 2])
def test_bf16_accumulation_by_default_at_stages_1_and_2(stage: int) -> None:
    """DeepSpeed's default there: the model's dtype, where the small gradients vanish."""
    norms = run_distributed(_step, 2, 200, args=(stage, None))
    assert norms == [pytest.approx(0.25, abs=0, rel=1e-7)] * 2
