"""``zero.Init``: a model built inside never holds its whole parameter set on one rank.

Each module's parameters are partitioned right after that module's outermost ``__init__`` returns,
so the user's own initialisation (including a subclass's extra init after ``super().__init__()``)
is kept: gathered, the model equals the same model built without the context. Building a 67 MB
model under Init on 2 ranks peaks well below the model's size (the kernel's peak-RSS mark, VmHWM,
reset just before building and read just after).
"""

from __future__ import annotations

import math

import pytest
import torch
from _models import global_batches
from torch import nn

import ds_comm
from ds_comm.testing import run_distributed


class Scaled(nn.Linear):
    """A subclass that initialises further after ``super().__init__()``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out)
        self.gain = nn.Parameter(torch.full((n_out,), 1.5))
        with torch.no_grad():
            self.bias.fill_(0.25)

    def forward(self, x):
        return super().forward(x) * self.gain


def build() -> nn.Module:
    torch.manual_seed(0)

    class Net(nn.Module):  # defined when build() runs: inside the context in the tests
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(Scaled(12, 24), nn.GELU(), nn.Linear(24, 24), nn.GELU())
            self.head = nn.Linear(24, 3)

        def forward(self, x):
            return self.head(self.body(x))

    return Net()


def _reference(steps: int) -> dict[str, torch.Tensor]:
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    for x, y in global_batches(steps, 2, 2):
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _built_under_init():
    from _stage3_models import stage3_policy

    from ds_zero import wrap
    from ds_zero.stage3 import GatheredParameters, Init, InitConfig, ZeroParamStatus, full_state_dict

    world, rank = ds_comm.get_world_size(), ds_comm.get_rank()
    with Init(config_dict_or_path=InitConfig()):
        model = build()
    params = list(model.parameters())
    layout = [(p.numel(), p.ds_tensor.numel(), tuple(p.ds_shape), p.ds_numel, p.ds_status) for p in params]
    for p in params:
        assert p.ds_tensor.numel() == math.ceil(p.ds_numel / world) and p.numel() == 0
        assert p.ds_status == ZeroParamStatus.NOT_AVAILABLE
    assert len({p.ds_id for p in params}) == len(params)
    with GatheredParameters(params):
        gathered = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    trainer = wrap(model, opt, policy=stage3_policy(cap=300, persist=30))
    from torch.distributed.tensor import DTensor

    sharded = {name: isinstance(p, DTensor) for name, p in model.named_parameters()}
    mine = slice(rank * 2, rank * 2 + 2)
    for x, y in global_batches(3, 2, world):
        trainer.backward(nn.functional.mse_loss(model(x[mine]), y[mine]))
        trainer.step()
    return layout, gathered, sharded, full_state_dict(model, rank0_only=False)


@pytest.mark.timeout(120)
def test_model_built_under_init_is_partitioned_and_keeps_its_init():
    results = run_distributed(_built_under_init, world_size=2)
    plain = build()
    for layout, gathered, sharded, trained in results:
        assert [entry[0] for entry in layout] == [0] * len(layout)  # nothing whole on any rank
        # the unit rule sees the full sizes of the (empty) Init shards: only the small ones stay whole
        assert sharded == {name: p.numel() > 30 for name, p in plain.named_parameters()}
        assert [entry[2] for entry in layout] == [tuple(p.shape) for p in plain.parameters()]
        for name, p in plain.named_parameters():
            assert torch.equal(gathered[name], p), name  # the user's initialisation, bit for bit
        for key, want in _reference(3).items():
            torch.testing.assert_close(trained[key], want, rtol=1e-5, atol=1e-5, msg=key)


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS and return that."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")
    return _status("VmRSS")


def _build_peaks():
    from ds_zero.stage3 import Init

    def big() -> nn.Module:
        return nn.Sequential(*[nn.Linear(1024, 512, bias=False) for _ in range(32)])

    full = 32 * 1024 * 512 * 4
    with Init(dtype=torch.float32):  # warm-up: first-use allocations of the collectives
        nn.Linear(1024, 512, bias=False)
    base = _reset_peak()
    with Init(dtype=torch.float32):
        sharded = big()
    under_init = _status("VmHWM") - base
    kept = sum(p.ds_tensor.numel() * 4 for p in sharded.parameters())
    ds_comm.barrier()
    base = _reset_peak()
    whole = big()
    without = _status("VmHWM") - base
    del whole
    return full, under_init, kept, without


@pytest.mark.timeout(120)
def test_building_under_init_peaks_well_below_the_model(monkeypatch):
    # glibc returns every block >= 128 KiB to the OS when freed, so peak RSS follows live memory
    # (read by glibc at process start: the spawned ranks inherit it)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    for full, under_init, kept, without in run_distributed(_build_peaks, world_size=2):
        assert kept == full // 2  # each rank keeps half
        assert under_init < 0.65 * full, f"building under Init peaked at {under_init / full:.2f}x the model"
        assert without > 0.8 * full  # the measurement sees a whole model when there is one


def _options():
    from ds_zero.stage3 import Init, InitConfig

    with Init(config_dict_or_path=InitConfig(dtype=torch.bfloat16), remote_device="cpu"):
        bf16 = nn.Linear(4, 6)
    with Init(dtype=torch.float16):
        fp16 = nn.Linear(4, 6)
    with Init(enabled=False):
        untouched = nn.Linear(4, 6)
    existing = nn.Linear(4, 6)
    Init(module=existing, dtype=torch.float32)
    try:
        Init(dtype=torch.int8)
        bad = None
    except ValueError as exc:
        bad = str(exc)
    return (
        bf16.weight.ds_tensor.dtype,
        fp16.weight.ds_tensor.dtype,
        untouched.weight.shape,
        existing.weight.ds_tensor.numel(),
        bad,
        nn.Linear.__init__.__name__,
    )


@pytest.mark.timeout(120)
def test_dtype_device_enabled_and_module_options():
    bf16, fp16, untouched, existing, bad, init_name = run_distributed(_options, world_size=2)[0]
    assert (bf16, fp16) == (torch.bfloat16, torch.float16)
    assert untouched == torch.Size([6, 4]) and existing == 12
    assert "zero.Init(dtype=torch.int8)" in bad
    assert init_name == "__init__" and not hasattr(nn.Linear.__init__, "__wrapped__")  # constructors restored
