"""Optimizers and LR schedules built from config sections, and their parameter checks."""

from __future__ import annotations

import pytest
import torch

from ds_engine.builders import build_optimizer, build_scheduler
from ds_engine.config import DeepSpeedConfigError
from ds_engine.config.optim import OptimizerConfig, SchedulerConfig
from ds_engine.lr_schedules import WarmupLR
from ds_engine.torch_optimizers import Lamb, Lion

try:  # ds_kernels' fused optimizers are preferred when that package provides them
    from ds_kernels import FusedAdam, FusedLamb, FusedLion
except ImportError:  # pragma: no cover - the torch fallbacks
    FusedAdam, FusedLamb, FusedLion = torch.optim.AdamW, Lamb, Lion


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))]


def _opt(type_: str, **params) -> torch.optim.Optimizer:
    return build_optimizer(OptimizerConfig(type=type_, params=params), _params(), on_cpu=True)


def _uses_decoupled_decay(opt: torch.optim.Optimizer) -> bool:
    """One step with zero gradient: decoupled decay (AdamW) moves weights by lr * wd * w, L2 (Adam) does
    not move them at all in the first step beyond the normalised update of wd * w."""
    for p in opt.param_groups[0]["params"]:
        p.grad = torch.zeros_like(p)
    opt.step()
    w = opt.param_groups[0]["params"][0]
    return torch.allclose(w, torch.full_like(w, 1 - 0.1 * 0.5))


def test_adam_means_adamw_unless_adam_w_mode_is_false() -> None:
    assert _uses_decoupled_decay(_opt("Adam", lr=0.1, weight_decay=0.5))
    assert not _uses_decoupled_decay(_opt("Adam", lr=0.1, weight_decay=0.5, adam_w_mode=False))
    assert _uses_decoupled_decay(_opt("AdamW", lr=0.1, weight_decay=0.5, adam_w_mode=False))  # always AdamW
    torch_plain = _opt("Adam", lr=0.1, weight_decay=0.5, adam_w_mode=False, torch_adam=True)
    assert type(torch_plain) is torch.optim.Adam and not _uses_decoupled_decay(torch_plain)
    assert type(_opt("Adam", lr=0.1, torch_adam=True)) is torch.optim.AdamW


def test_adam_builds_fused_adam_as_deepspeed_does() -> None:
    assert type(_opt("AdamW", lr=0.1)).__name__ == FusedAdam.__name__
    assert not _opt("AdamW", lr=0.1, torch_adam=True).defaults.get("fused")


def test_without_ds_kernels_torch_adamw_is_fused_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import ds_engine.builders as builders

    monkeypatch.setattr(builders, "_kernel", lambda name: None)
    opt = _opt("AdamW", lr=0.1)
    assert type(opt) is torch.optim.AdamW and opt.defaults["fused"] is True
    assert isinstance(_opt("Lamb", lr=0.1), Lamb) and isinstance(_opt("Lion", lr=0.1), Lion)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("SGD", torch.optim.SGD),
        ("sgd", torch.optim.SGD),
        ("Adagrad", torch.optim.Adagrad),
        ("RMSprop", torch.optim.RMSprop),
        ("Lamb", FusedLamb),
        ("lion", FusedLion),
    ],
)
def test_named_optimizers(name: str, cls: type) -> None:
    kwargs = {"lr": 0.01, "momentum": 0.9} if name.lower() == "sgd" else {"lr": 0.01}
    opt = _opt(name, **kwargs)
    assert type(opt).__name__ == cls.__name__
    assert opt.param_groups[0]["lr"] == 0.01


@pytest.mark.parametrize(
    ("type_", "params", "message"),
    [
        (
            "AdamW",
            {"lrr": 0.1},
            "'optimizer.params.lrr' is not a parameter of FusedAdam; did you mean 'optimizer.params.lr'?",
        ),
        ("SGD", {"lr": 0.1, "beta": 0.9}, "'optimizer.params.beta' is not a parameter of SGD"),
        ("AdamWW", {}, "'optimizer.type': unknown optimizer 'AdamWW'; did you mean 'AdamW'?"),
        ("OneBitAdam", {}, "OneBitAdam is not supported yet"),
        # A value the optimizer itself refuses (lr/betas/eps/weight_decay are refused earlier, by the config).
        ("SGD", {"lr": 0.1, "momentum": -1.0}, "'optimizer' (SGD): Invalid momentum value"),
    ],
)
def test_optimizer_errors(type_: str, params: dict, message: str) -> None:
    with pytest.raises(DeepSpeedConfigError) as info:
        _opt(type_, **params)
    assert message in str(info.value)


def test_schedulers_by_deepspeed_and_torch_name() -> None:
    opt = torch.optim.SGD(_params(), lr=0.1)
    ours = build_scheduler(SchedulerConfig(type="WarmupLR", params={"warmup_num_steps": 5}), opt)
    assert isinstance(ours, WarmupLR)
    theirs = build_scheduler(SchedulerConfig(type="StepLR", params={"step_size": 2, "gamma": 0.5}), opt)
    assert isinstance(theirs, torch.optim.lr_scheduler.StepLR)


@pytest.mark.parametrize(
    ("type_", "params", "message"),
    [
        ("WarmupLRR", {}, "unknown LR schedule 'WarmupLRR'; did you mean 'WarmupLR'?"),
        ("WarmupLR", {"warmup_num_step": 5}, "did you mean 'scheduler.params.warmup_num_steps'?"),
        ("WarmupDecayLR", {}, "'scheduler' (WarmupDecayLR):"),
        ("WarmupLR", {"warmup_num_steps": -3}, "warmup_num_steps must be a positive integer"),
    ],
)
def test_scheduler_errors(type_: str, params: dict, message: str) -> None:
    with pytest.raises(DeepSpeedConfigError) as info:
        build_scheduler(SchedulerConfig(type=type_, params=params), torch.optim.SGD(_params(), lr=0.1))
    assert message in str(info.value)
