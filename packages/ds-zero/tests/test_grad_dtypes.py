"""Every stage reduces bf16 gradients in the same dtype (Note [gradient dtypes] in ds_zero.dtypes):
DeepSpeed 0.19's default, the model's dtype, or ``communication_data_type`` when it is set.

Observed at the c10d dispatcher (a ``TorchDispatchMode`` sees every collective with its tensors, FSDP2's
included): the dtype of each gradient-sized all-reduce / reduce-scatter issued during one real step.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ds_comm.testing import run_distributed

WIDTH = 32


class _ReduceDtypes(TorchDispatchMode):
    """Dtypes of the reduce collectives on more than a handful of elements (not norms or agreement tokens)."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if func.namespace == "c10d" and ("allreduce" in name or "reduce_scatter" in name):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            tensors += [
                t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)
            ]
            if max(t.numel() for t in tensors) > 64:
                self.dtypes.add(str(max(tensors, key=torch.Tensor.numel).dtype))
        return func(*args, **(kwargs or {}))


def _step(stage: int, comm: str | None):
    from ds_zero import MixedPrecisionPolicy, ReducePolicy, ZeroPolicy, wrap
    from ds_zero.stage3 import Stage3Policy, Zero3Policy

    os.environ["DS_ZERO_SHM_ALLREDUCE"] = "0"  # stage 0 through c10d, where the dispatcher sees it
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.GELU(), torch.nn.Linear(WIDTH, WIDTH))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=getattr(torch, comm) if comm else None)
    common = dict(stage=stage, mixed_precision=mp, reduce=ReducePolicy(bucket_numel=10**6))
    policy = Zero3Policy(**common, stage3=Stage3Policy()) if stage == 3 else ZeroPolicy(**common)
    trainer = wrap(model, torch.optim.AdamW(model.parameters()), policy=policy)
    x = torch.randn(4, WIDTH)
    with _ReduceDtypes() as seen:
        trainer.backward(model(x.to(torch.bfloat16)).float().square().mean())
        trainer.step()
    return sorted(seen.dtypes)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("comm", [None, "float32"])
def test_bf16_reduces_in_one_dtype_at_every_stage(comm):
    want = "torch.float32" if comm else "torch.bfloat16"  # DeepSpeed: communication_data_type, else bf16
    for stage in (0, 1, 2, 3):
        seen = run_distributed(_step, world_size=2, timeout=200, args=(stage, comm))
        assert seen[0] == seen[1] == [want], (stage, seen)
