"""``zero_optimization.zenflow`` through ``deepspeed.initialize`` on 2 real gloo ranks.

Frozen selection with a CPU update every step (Note [zenflow] in ds_zero.zenflow) trains exactly as
stage 2 + CPU offload without ZenFlow; a selective schedule trains differently; bad values are one-line
errors naming the key. The numerics against ZenFlow's definition are in packages/ds-zero/tests/test_zenflow.py.
"""

from __future__ import annotations

import pytest
import torch

from ds_comm.testing import run_distributed

STEPS = 10
ADAM = {"type": "Adam", "params": {"lr": 1e-2, "weight_decay": 0.01}}


def _config(zenflow: dict | None) -> dict:
    zero: dict = {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": False}}
    if zenflow is not None:
        zero["zenflow"] = zenflow
    # no clipping: DeepSpeed's selective update is never clipped, so clipping would separate the two runs
    return {
        "train_micro_batch_size_per_gpu": 2,
        "optimizer": ADAM,
        "gradient_clipping": 0.0,
        "zero_optimization": zero,
    }


def _train(zenflow: dict | None, steps: int) -> tuple[list[float], list[torch.Tensor]]:
    import deepspeed

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=_config(zenflow)
    )
    gen = torch.Generator().manual_seed(1 + engine.global_rank)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(2, 8, generator=gen), torch.randn(2, 4, generator=gen)
        loss = torch.nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    params = [p.detach().clone() for p in engine.module.parameters()]
    engine.destroy()
    return losses, params


@pytest.mark.timeout(240)
def test_frozen_selection_with_every_step_updates_equals_stage2_offload() -> None:
    frozen = {"topk_ratio": 0.5, "update_interval": 1, "select_strategy": "step", "select_interval": 1000}
    plain = run_distributed(_train, world_size=2, args=(None, STEPS), timeout=200)
    zenflow = run_distributed(_train, world_size=2, args=(frozen, STEPS), timeout=200)
    for (want_losses, want), (got_losses, got) in zip(plain, zenflow):
        assert got_losses == pytest.approx(want_losses, abs=1e-5)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    selective = {"topk_ratio": 0.25, "update_interval": 2, "overlap_step": True}
    other = run_distributed(_train, world_size=2, args=(selective, STEPS), timeout=200)
    assert max(abs(a - b) for a, b in zip(other[0][0], plain[0][0])) > 1e-4  # the schedule changed training
    assert all(torch.equal(a, b) for a, b in zip(other[0][1], other[1][1]))  # ranks agree


@pytest.mark.parametrize(
    ("zero", "extra", "needle"),
    [
        (
            {"zenflow": {"topk_ratio": 1.0, "update_interval": 2}},
            {},
            "'zero_optimization.zenflow.topk_ratio'",
        ),
        (
            {"zenflow": {"topk_ratio": 0.0, "update_interval": 2}},
            {},
            "'zero_optimization.zenflow.topk_ratio'",
        ),
        ({"zenflow": {"update_interval": 0}}, {}, "'zero_optimization.zenflow.update_interval'"),
        ({"zenflow": {}}, {}, '\'zero_optimization.zenflow.update_interval="auto"'),
        (
            {"zenflow": {"update_interval": 4, "select_strategy": "step", "select_interval": 2}},
            {},
            "select_interval",
        ),
        ({"zenflow": {"update_interval": 2, "select_interval": 3}}, {}, "select_interval"),
        (
            {"zenflow": {"update_interval": 2}, "offload_optimizer": None},
            {},
            "offload_optimizer.device 'cpu'",
        ),
        ({"zenflow": {"update_interval": 2}, "stage": 3}, {}, "'zero_optimization.zenflow (stage 3)'"),
        (
            {"zenflow": {"update_interval": 2}},
            {"gradient_accumulation_steps": 2},
            "gradient_accumulation_steps",
        ),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(zero: dict, extra: dict, needle: str) -> None:
    from ds_engine.config import DeepSpeedConfig, DeepSpeedConfigError
    from ds_engine.zero_policy import policy_from_config

    config = _config(None)
    config["zero_optimization"] = {
        k: v for k, v in {**config["zero_optimization"], **zero}.items() if v is not None
    }
    config.update(extra)
    with pytest.raises(DeepSpeedConfigError) as err:
        policy_from_config(DeepSpeedConfig(config, world_size=1))
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_config_keys_reach_the_policy() -> None:
    from ds_engine.config import DeepSpeedConfig
    from ds_engine.zero_policy import policy_from_config

    config = _config(
        {
            "topk_ratio": 0.2,
            "update_interval": 3,
            "select_strategy": "epoch",
            "select_interval": 2,
            "steps_per_epoch": 5,
            "overlap_step": True,
            "offload": True,
            "full_warm_up_rounds": 4,
        }
    )
    zf = policy_from_config(DeepSpeedConfig(config, world_size=1)).zenflow
    assert (zf.topk_ratio, zf.update_interval, zf.select_interval) == (0.2, 3, 10)
    assert (zf.overlap_step, zf.offload, zf.full_warm_up_rounds) == (True, True, 4)
    config["zero_optimization"]["zenflow"] = {"update_interval": 2}  # auto: every epoch, length unknown
    assert policy_from_config(DeepSpeedConfig(config, world_size=1)).zenflow.select_interval == 0


def _epoch_interval() -> tuple[int, int]:
    import deepspeed

    model = torch.nn.Linear(4, 4)
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 4))
    config = _config({"update_interval": 2, "select_strategy": "epoch", "select_interval": 3})
    engine, _, loader, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), training_data=data, config=config
    )
    interval = engine.optimizer.schedule.select_interval
    engine.destroy()
    return interval, len(loader)


@pytest.mark.timeout(120)
def test_epoch_selection_counts_the_training_loader() -> None:
    # DeepSpeed: select_interval epochs of len(engine.training_dataloader) steps each
    interval, steps_per_epoch = run_distributed(_epoch_interval, world_size=1, timeout=100)[0]
    assert steps_per_epoch == 4 and interval == 3 * 4


# --- checkpoints (Note [zenflow checkpoint] in ds_zero.zenflow) ---------------------------------------
RESUME = {
    "topk_ratio": 0.25,
    "update_interval": 3,
    "select_strategy": "step",
    "select_interval": 6,
    "full_warm_up_rounds": 2,
    "overlap_step": True,
}
TOTAL, SAVED_AT = 14, 9  # mid-interval, with an overlapped CPU step not yet published


def _train_checkpointed(zenflow: dict | None, ckpt: str, phase: str) -> dict:
    """``phase``: "unbroken" runs TOTAL steps; "save" runs SAVED_AT steps and saves; "resume" loads and
    runs the rest. Returns the losses, the weights, and (at "save") the weights zero_to_fp32 gives."""
    import deepspeed
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    torch.manual_seed(0 if phase != "resume" else 7)  # the resumed weights must come from the checkpoint
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=_config(zenflow)
    )
    gen = torch.Generator().manual_seed(1 + engine.global_rank)
    batches = [(torch.randn(2, 8, generator=gen), torch.randn(2, 4, generator=gen)) for _ in range(TOTAL)]
    steps = {"unbroken": batches, "save": batches[:SAVED_AT], "resume": batches[SAVED_AT:]}[phase]
    if phase == "resume":
        engine.load_checkpoint(ckpt)
    losses = []
    for x, y in steps:
        loss = torch.nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    out: dict = {"losses": losses, "params": [p.detach().clone() for p in engine.module.parameters()]}
    if phase == "save":
        engine.save_checkpoint(ckpt)
        engine.destroy()
        if engine.global_rank == 0:
            out["fp32"] = get_fp32_state_dict_from_zero_checkpoint(ckpt)
        return out
    engine.destroy()
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("overlap", [True, False])
def test_resume_equals_an_unbroken_run(tmp_path, overlap: bool) -> None:
    ckpt, zenflow = str(tmp_path / "ckpt"), {**RESUME, "overlap_step": overlap}
    unbroken = run_distributed(
        _train_checkpointed, world_size=2, args=(zenflow, ckpt, "unbroken"), timeout=200
    )
    saved = run_distributed(_train_checkpointed, world_size=2, args=(zenflow, ckpt, "save"), timeout=200)
    resumed = run_distributed(_train_checkpointed, world_size=2, args=(zenflow, ckpt, "resume"), timeout=200)
    for want, first, second in zip(unbroken, saved, resumed):
        assert first["losses"] + second["losses"] == want["losses"]
        for a, b in zip(second["params"], want["params"]):
            assert torch.equal(a, b), (a - b).abs().max()
    # zero_to_fp32 gives what the model showed at the save (the selected columns' values included)
    shown = dict(zip(["0.weight", "0.bias", "2.weight", "2.bias"], saved[0]["params"]))
    assert set(saved[0]["fp32"]) == set(shown)
    for name, value in saved[0]["fp32"].items():
        if not overlap or value.dim() == 1:  # overlap_step: the model's unselected columns trail the masters
            torch.testing.assert_close(value, shown[name], rtol=0, atol=0)


@pytest.mark.timeout(300)
def test_checkpoints_cross_between_zenflow_and_plain_offload(tmp_path) -> None:
    ckpt = str(tmp_path / "ckpt")
    run_distributed(_train_checkpointed, world_size=2, args=(RESUME, ckpt, "save"), timeout=200)
    plain = run_distributed(_train_checkpointed, world_size=2, args=(None, ckpt, "resume"), timeout=200)
    assert all(len(r["losses"]) == TOTAL - SAVED_AT for r in plain)
    ckpt2 = str(tmp_path / "plain")
    run_distributed(_train_checkpointed, world_size=2, args=(None, ckpt2, "save"), timeout=200)
    zenflow = run_distributed(_train_checkpointed, world_size=2, args=(RESUME, ckpt2, "resume"), timeout=200)
    assert all(torch.equal(a, b) for a, b in zip(zenflow[0]["params"], zenflow[1]["params"]))
