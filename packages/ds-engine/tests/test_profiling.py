"""The FLOPs profiler (``deepspeed.profiling.flops_profiler``): counts against the reference DeepSpeed,
per-module attribution, the printed profile, and DeepSpeed's number formatting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ds_engine.profiling import (
    FlopsProfiler,
    bytes_to_string,
    duration_to_string,
    flops_to_string,
    get_model_profile,
    macs_to_string,
    number_to_string,
    params_to_string,
)

# deepspeed==0.19.8 (/work/dsref-venv, torch 2.13.0+cpu): get_model_profile(_cnn(), input_shape=(4, 3, 32, 32),
# print_profile=False, as_string=False). Conv/linear/batch-norm/relu/pool terms all follow DeepSpeed's rules,
# so the numbers agree exactly.
REFERENCE_CNN = (15_575_552, 7_541_760, 268_746)


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 8 * 8, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def test_cnn_profile_equals_deepspeed() -> None:
    flops, macs, params = get_model_profile(
        _cnn(), input_shape=(4, 3, 32, 32), print_profile=False, as_string=False
    )
    assert (flops, macs, params) == REFERENCE_CNN
    as_text = get_model_profile(_cnn(), input_shape=(4, 3, 32, 32), print_profile=False)
    assert as_text == ("15.58 M", "7.54 MMACs", "268.75 K")


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.norm(self.inner(x)) @ x.transpose(-1, -2), dim=-1)


def test_figures_are_charged_to_the_innermost_module_and_added_up(capsys, tmp_path) -> None:
    model = _Block()
    prof = FlopsProfiler(model)
    prof.start_profile()
    x = torch.randn(2, 4, 8)
    model(x)
    linear_macs = 2 * 4 * 8 * 8
    assert (model.inner.__macs__, model.inner.__flops__) == (linear_macs, 2 * linear_macs)
    assert model.norm.__flops__ == 5 * x.numel() and model.norm.__macs__ == 0
    bmm_macs = 2 * 4 * 8 * 4
    assert model.__macs__ == bmm_macs and model.__flops__ == 2 * bmm_macs + 2 * 4 * 4  # + softmax per element
    assert prof.get_total_macs() == linear_macs + bmm_macs
    assert prof.get_total_params() == sum(p.numel() for p in model.parameters())
    assert prof.get_total_duration() > 0
    out = tmp_path / "prof" / "profile.txt"
    prof.print_model_profile(profile_step=3, output_file=str(out))
    text = out.read_text()
    assert "Profile Summary at step 3:" in text and "fwd MACs per GPU:" in text and "(inner): Linear(" in text
    prof.print_model_profile(profile_step=3, detailed=False)
    assert "Aggregated Profile per GPU" in capsys.readouterr().out
    prof.end_profile()
    assert not hasattr(model.inner, "__flops__")
    model(x)  # hooks are gone: nothing counted, nothing fails


def test_ops_outside_the_profile_are_not_counted() -> None:
    model = nn.Linear(4, 4)
    prof = FlopsProfiler(model)
    prof.start_profile()
    torch.randn(3, 3) @ torch.randn(3, 3)  # not in the model's forward
    model(torch.randn(1, 4))
    assert prof.get_total_macs() == 16
    prof.stop_profile()
    model(torch.randn(1, 4))
    assert prof.get_total_macs() == 16
    prof.end_profile()


def test_ignored_module_types() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    prof = FlopsProfiler(model)
    prof.start_profile(ignore_list=[nn.ReLU])
    model(torch.randn(1, 4))
    # An ignored module is not profiled itself: its relu is charged to the parent, as in DeepSpeed.
    assert (model[1].__flops__, model.__flops__, prof.get_total_flops()) == (0, 4, 2 * 16 + 4)
    prof.end_profile()


@pytest.mark.faults
def test_bad_profile_inputs_are_named() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(ValueError, match="input_shape, args or kwargs"):
        get_model_profile(model, print_profile=False)
    with pytest.raises(ValueError, match="non-empty tuple"):
        get_model_profile(model, input_shape=[1, 4], print_profile=False)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: number_to_string(1.5e9), "1.5 G"),
        (lambda: number_to_string(0), "0 "),
        (lambda: number_to_string(12_345, units="M", precision=3), "0.012 M"),
        (lambda: number_to_string(5e-7), "0.5 u"),
        (lambda: macs_to_string(7_541_760), "7.54 MMACs"),
        (lambda: flops_to_string(2.5e12), "2.5 TFLOPS"),
        (lambda: bytes_to_string(2048), "2.05 KB"),
        (lambda: params_to_string(1.3e9), "1.3 B"),
        (lambda: params_to_string(1.3e9, units="B"), "1.3 B"),
        (lambda: duration_to_string(0.0125), "12.5 ms"),
    ],
)
def test_formatting_matches_deepspeed(call, expected) -> None:
    assert call() == expected
