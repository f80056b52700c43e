"""Resuming from checkpoints the reference DeepSpeed (0.19.8) wrote, optimizer state included.

The fixtures under ``fixtures/`` are real DeepSpeed checkpoints (fp32 stages 0, 2 and 3, bf16 stages 1
and 3; 2 ranks, a tiny MLP after 3 AdamW steps) with what DeepSpeed itself computed over the next 3 steps; how they were
made is ``fixtures/make_deepspeed_checkpoints.py``. Resuming here, at the same or another stage and
world size, must reproduce those steps: equal losses and final weights to 1e-5 need the imported
fp32 masters, Adam moments and step counts to be right. ``zero_to_fp32`` must rebuild the weights
at the checkpoint exactly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from ds_comm.testing import run_distributed

FIXTURES = Path(__file__).with_name("fixtures")


def _resume(checkpoint: str, stage: int, micro: int, bf16: bool = False, two_groups: bool = False):
    import deepspeed

    torch.manual_seed(123)  # different initial weights: everything must come from the checkpoint
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    groups = model.parameters()
    if two_groups:  # as the fixture's run (and HF's Trainer): weights decay, biases do not
        groups = [
            {"params": [p for n, p in model.named_parameters() if n.endswith("weight")], "weight_decay": 0.1},
            {"params": [p for n, p in model.named_parameters() if n.endswith("bias")], "weight_decay": 0.0},
        ]
    config = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.01}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 5, "warmup_max_lr": 1e-2}},
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
        "bf16": {"enabled": bf16},
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=config)
    path, client_state = engine.load_checkpoint(checkpoint)
    assert path is not None and engine.global_steps == 3
    rank = deepspeed.comm.get_rank()
    losses = []
    for step in range(3, 6):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(100 + step))[
            rank * micro : (rank + 1) * micro
        ]
        loss = engine(x.bfloat16() if bf16 else x).pow(2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    if stage == 3:
        weights = engine._zero3_consolidated_16bit_state_dict()
    else:
        weights = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    return losses, weights


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("saved_stage", "stage", "world"),
    [
        (2, 2, 2),
        (2, 3, 2),
        (2, 1, 1),  # same run, another stage, another stage and world size
        (3, 3, 2),
        (3, 2, 2),
        (3, 0, 1),
        (3, 2, 4),
    ],
)
def test_resume_from_a_deepspeed_checkpoint_continues_its_run(tmp_path, saved_stage, stage, world):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / f"ds0.19.8-stage{saved_stage}", checkpoint)
    expected = torch.load(checkpoint / "expected.pt", weights_only=True)
    results = run_distributed(
        _resume, world_size=world, timeout=200, args=(str(checkpoint), stage, 4 // world)
    )
    losses, weights = results[0]
    if (
        world == 2
    ):  # rank 0 sees the same rows as DeepSpeed's rank 0 did (other world sizes split the batch otherwise)
        assert losses == pytest.approx(expected["losses_after_resume"], rel=1e-5, abs=1e-6)
    for name, want in expected["weights"].items():
        torch.testing.assert_close(weights[name], want, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("saved_stage", "stage"), [(1, 1), (1, 3), (3, 3), (3, 2)])
def test_resume_from_a_deepspeed_bf16_checkpoint(tmp_path, saved_stage, stage):
    """DeepSpeed's bf16 optimizer names its files bf16_zero_pp_rank_*; the weights it trains are bf16."""
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / f"ds0.19.8-bf16-stage{saved_stage}", checkpoint)
    expected = torch.load(checkpoint / "expected.pt", weights_only=True)
    losses, weights = run_distributed(
        _resume, world_size=2, timeout=200, args=(str(checkpoint), stage, 2, True)
    )[0]
    assert losses == expected["losses_after_resume"]
    for name, want in expected["weights"].items():
        assert weights[name].dtype == torch.bfloat16
        # within one bf16 rounding step: at stage 3 gradients are reduced in fp32 here, so a few
        # weights round the other way (identical at stages 1-2)
        torch.testing.assert_close(weights[name], want, rtol=2**-7, atol=2**-15, msg=name)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("saved_stage", "stage", "world"), [(2, 2, 2), (2, 3, 2), (3, 3, 2), (3, 1, 1)])
def test_resume_from_a_deepspeed_checkpoint_with_two_param_groups(tmp_path, saved_stage, stage, world):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / f"ds0.19.8-groups-stage{saved_stage}", checkpoint)
    expected = torch.load(checkpoint / "expected.pt", weights_only=True)
    losses, weights = run_distributed(
        _resume, world_size=world, timeout=200, args=(str(checkpoint), stage, 4 // world, False, True)
    )[0]
    if world == 2:
        assert losses == pytest.approx(expected["losses_after_resume"], rel=1e-5, abs=1e-6)
    for name, want in expected["weights"].items():
        torch.testing.assert_close(weights[name], want, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("saved_stage", [2, 3])
def test_zero_to_fp32_consolidates_a_deepspeed_checkpoint(tmp_path, saved_stage):
    import subprocess
    import sys

    checkpoint = FIXTURES / f"ds0.19.8-stage{saved_stage}"
    expected = torch.load(checkpoint / "expected.pt", weights_only=True)["weights_at_checkpoint"]
    done = subprocess.run(
        [sys.executable, "-m", "deepspeed.utils.zero_to_fp32", str(checkpoint), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    consolidated = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert consolidated.keys() == expected.keys()
    for name, want in expected.items():
        torch.testing.assert_close(consolidated[name], want, rtol=0, atol=0, msg=name)


def _resume_stage0_weights_only(checkpoint: str):
    import deepspeed

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    config = {"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    try:
        engine.load_checkpoint(checkpoint)
        refused = None
    except ValueError as exc:
        refused = str(exc)
    engine.load_checkpoint(checkpoint, load_optimizer_states=False)
    return (
        refused,
        {k: v.detach().clone() for k, v in engine.module.state_dict().items()},
        engine.global_steps,
    )


@pytest.mark.timeout(120)
def test_deepspeed_stage0_optimizer_state_is_refused_clearly_and_weights_still_load():
    checkpoint = FIXTURES / "ds0.19.8-stage0"
    expected = torch.load(checkpoint / "expected.pt", weights_only=True)["weights_at_checkpoint"]
    refused, weights, steps = run_distributed(
        _resume_stage0_weights_only, world_size=1, args=(str(checkpoint),)
    )[0]
    assert (
        "plain torch state dict (a DeepSpeed stage-0 save)" in refused
        and "load_optimizer_states=False" in refused
    )
    assert steps == 3
    for name, want in expected.items():
        torch.testing.assert_close(weights[name], want, rtol=0, atol=0, msg=name)
