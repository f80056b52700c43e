"""``bf16.bf16_master_weights_and_grads`` (and ``bf16_optimizer_states``) on 2 gloo ranks at ZeRO 1-3:
Note [low-precision masters] in ds_zero.low_precision_masters. The optimizer steps bf16 weights with no
fp32 copy, and its states are fp32 unless asked otherwise; training follows a single-process reference
that does the same arithmetic (bf16 weights, AdamW states in the chosen dtype, the step in fp32)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ds_comm.testing import run_distributed

GLOBAL, STEPS, LR = 8, 6, 1e-2
CORPUS = Path(__file__).parents[1] / "config_corpus" / "deepspeedexamples__bf16_master_weight_bf16_full.json"


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 48),
        torch.nn.Tanh(),
        torch.nn.Linear(48, 40),
        torch.nn.Tanh(),
        torch.nn.Linear(40, 3),
    )


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(50 + step % 2)  # two batches, revisited: the loss must fall
    return torch.randn(GLOBAL, 6, generator=gen), torch.randint(0, 3, (GLOBAL,), generator=gen)


def _config(stage: int, bf16_states: bool) -> dict:
    return {
        "train_batch_size": GLOBAL,
        "train_micro_batch_size_per_gpu": GLOBAL // 2,
        "gradient_clipping": 0.0,
        "optimizer": {"type": "AdamW", "params": {"lr": LR, "weight_decay": 0.0}},
        "bf16": {
            "enabled": True,
            "bf16_master_weights_and_grads": True,
            "bf16_optimizer_states": bf16_states,
        },
        "zero_optimization": {
            "stage": stage,
            "reduce_bucket_size": 500,
            "stage3_param_persistence_threshold": 50,
        },
    }


def _steps(engine, *, mean_over_ranks: bool) -> list[float]:
    """STEPS optimizer steps, each rank on its half of the global batch; the losses (mean over ranks or this rank's)."""
    import deepspeed

    rank = deepspeed.comm.get_rank()
    half = slice(rank * GLOBAL // 2, (rank + 1) * GLOBAL // 2)
    losses = []
    for step in range(STEPS):
        x, y = _batch(step)
        loss = torch.nn.functional.cross_entropy(engine(x[half].bfloat16()).float(), y[half])
        engine.backward(loss)
        engine.step()
        total = loss.detach().clone()
        if mean_over_ranks:
            deepspeed.comm.all_reduce(total)
            total /= 2
        losses.append(total.item())
    return losses


def _train(stage: int, bf16_states: bool) -> dict:
    import deepspeed

    engine, *_ = deepspeed.initialize(model=_model(), config=_config(stage, bf16_states))
    losses = _steps(engine, mean_over_ranks=True)
    trainer = engine.optimizer
    states = {v.dtype for s in trainer.optimizer.state.values() for k, v in s.items() if k != "step"}
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        params = [p.detach().float().clone() for p in engine.module.parameters()]
    return {
        "losses": losses,
        "params": params,
        "masters": {h.dtype for h in trainer.masters.holders},
        "states": states,
    }


def _reference(bf16_states: bool) -> tuple[list[float], list[torch.Tensor]]:
    """bf16 weights stepped by AdamW: states in bf16, or fp32 states with the step computed in fp32."""
    model = _model().bfloat16()
    params = list(model.parameters())
    shadow = [torch.nn.Parameter(p.detach().float()) for p in params]
    opt = torch.optim.AdamW(params if bf16_states else shadow, lr=LR, weight_decay=0.0)
    losses = []
    for step in range(STEPS):
        x, y = _batch(step)
        loss = torch.nn.functional.cross_entropy(model(x.bfloat16()).float(), y)
        loss.backward()
        if not bf16_states:
            for p, s in zip(params, shadow):
                s.data, s.grad = p.detach().float(), p.grad.float()
        opt.step()
        if not bf16_states:
            with torch.no_grad():
                for p, s in zip(params, shadow):
                    p.copy_(s)
        model.zero_grad()
        losses.append(loss.item())
    return losses, [p.detach().float() for p in params]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("bf16_states", [False, True])
def test_bf16_masters_follow_the_reference(stage: int, bf16_states: bool) -> None:
    results = run_distributed(_train, world_size=2, args=(stage, bf16_states), timeout=280)
    ref_losses, ref_params = _reference(bf16_states)
    for result in results:
        assert result["masters"] == {torch.bfloat16}  # no fp32 copy of the weights
        assert result["states"] == {torch.bfloat16 if bf16_states else torch.float32}
        # bf16 gradients averaged over 2 ranks round differently from one process's: a few bf16 ulps
        assert result["losses"] == pytest.approx(ref_losses, rel=3e-2)
        for got, want in zip(result["params"], ref_params):
            torch.testing.assert_close(got, want, rtol=0, atol=3e-2)
        assert result["losses"][-1] < result["losses"][0]


def test_the_deepspeed_examples_config_is_accepted_and_stage_0_is_refused() -> None:
    import deepspeed
    from deepspeed import DeepSpeedConfigError

    config = json.loads(CORPUS.read_text())
    assert config["bf16"]["bf16_master_weights_and_grads"] and config["zero_optimization"]["stage"] == 3
    deepspeed.DeepSpeedConfig(config, world_size=1)
    with pytest.raises(DeepSpeedConfigError, match="needs ZeRO stage 1, 2 or 3"):
        deepspeed.initialize(
            model=_model(),
            dist_init_required=False,
            config={
                **_config(1, False),
                "train_batch_size": 4,
                "train_micro_batch_size_per_gpu": 4,
                "zero_optimization": {"stage": 0},
            },
        )


def _train_with_corpus_config(name: str) -> dict:
    import deepspeed

    config = json.loads((CORPUS.parent / name).read_text())
    config["train_micro_batch_size_per_gpu"] = GLOBAL // 2  # the example's own config, on this tiny model
    model = _model()
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    losses = _steps(engine, mean_over_ranks=False)
    masters = {h.dtype for h in engine.optimizer.masters.holders}
    states = {v.dtype for s in engine.optimizer.optimizer.state.values() for k, v in s.items() if k != "step"}
    return {"losses": losses, "masters": masters, "states": states}


@pytest.mark.timeout(300)
def test_deepspeed_examples_bf16_master_weight_configs_train() -> None:
    """DeepSpeedExamples' training/bf16_master_weight configs (baseline and bf16_full: ZeRO-3, torch_autocast,
    bf16 masters and states). Its train.py calls torch.cuda.set_device, so it runs unchanged only on a GPU."""
    for name, masters in [
        ("deepspeedexamples__bf16_master_weight_baseline.json", torch.float32),
        (CORPUS.name, torch.bfloat16),
    ]:
        for result in run_distributed(_train_with_corpus_config, world_size=2, args=(name,), timeout=280):
            assert result["masters"] == {masters} and result["states"] == {masters}, name
            losses = result["losses"]  # batches alternate: compare the same batch early and late
            assert (
                all(torch.isfinite(torch.tensor(losses)))
                and losses[-2] < losses[0]
                and losses[-1] < losses[1]
            )
