"""``shard_for_inference``: stage-3 sharding and forward gathering without a trainer (no optimizer).

On 2 gloo ranks: the output equals the unsharded model's; the shards are in the model's dtype (no fp32
masters: Note [inference shards]); every live tensor in the rank (a ``gc`` walk, as in the memory tests)
stays near Ψ·bytes/N after forward — the root unit too, which FSDP2 would keep gathered for a backward
that never comes; and models built under ``zero.Init`` run.
"""

from __future__ import annotations

import pytest
import torch
from _models import live_tensor_bytes
from _stage3_models import stage3_policy

import ds_comm
from ds_comm.testing import run_distributed

WIDTH, DEPTH = 128, 6


class _Net(torch.nn.Module):
    """Layers that become units of their own, and a projection the root itself holds (the root unit)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(DEPTH))
        self.proj = torch.nn.Parameter(torch.randn(WIDTH, WIDTH) * WIDTH**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x @ self.proj


def _model() -> torch.nn.Module:
    return _Net()


def _run(dtype_name: str, zero_init: bool):
    from torch.distributed.tensor import DTensor

    from ds_zero.stage3 import Init
    from ds_zero.stage3.inference import shard_for_inference

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    reference = _model().to(dtype)
    psi = sum(p.numel() for p in reference.parameters())
    x = torch.randn(4, WIDTH, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        expected = reference(x)
    del reference
    torch.manual_seed(0)
    if zero_init:
        with Init(dtype=dtype):
            model = _model()
    else:
        model = _model().to(dtype)
    # one layer per unit; the root unit holds proj
    sharding = shard_for_inference(model, policy=stage3_policy(cap=WIDTH * WIDTH, persist=0, dtype=dtype))
    shard_dtypes = {p.dtype for p in model.parameters()}
    assert all(isinstance(p, DTensor) for p in model.parameters())
    baseline = live_tensor_bytes()  # the shards, x and expected
    with torch.no_grad():
        out = model(x)
    after = live_tensor_bytes() - out.untyped_storage().nbytes()
    sharding.close()
    return out, expected, shard_dtypes, baseline, after, psi * x.element_size(), ds_comm.get_world_size()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
@pytest.mark.parametrize("zero_init", [False, True], ids=["plain", "zero_init"])
def test_shard_for_inference_matches_and_holds_a_shard(dtype_name, zero_init):
    for out, expected, shard_dtypes, baseline, after, full_bytes, world in run_distributed(
        _run, world_size=2, timeout=200, args=(dtype_name, zero_init)
    ):
        if dtype_name == "float32":
            assert torch.equal(out, expected)
        else:
            torch.testing.assert_close(out, expected, rtol=1.6e-2, atol=1e-2)
        assert shard_dtypes == {getattr(torch, dtype_name)}
        small = 8 * 1024  # x and expected (2 KiB each in fp32)
        for when, used in (("before forward", baseline), ("after forward", after)):
            assert used <= full_bytes / world + small, (
                f"{when}: {used} bytes > {full_bytes / world + small:.0f}"
            )
