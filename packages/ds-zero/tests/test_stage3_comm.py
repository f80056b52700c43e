"""Stage-3 communication per step, counted where it happens: every c10d collective the ranks issue.

FSDP2 calls ``torch.distributed`` directly (not ``ds_comm``), so the test records the collectives
at the dispatcher (a ``TorchDispatchMode`` sees each ``c10d`` op with its tensors), which counts
FSDP2's traffic, ours and anything else alike. With no unit kept gathered between forward and
backward, each parameter is all-gathered twice and its gradient reduce-scattered once: 3Ψ.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from _stage3_models import stage3_policy
from torch.utils._python_dispatch import TorchDispatchMode

from ds_comm.testing import run_distributed

WIDTH, DEPTH = 64, 4


class _Collectives(TorchDispatchMode):
    """Bytes per c10d op: the full-size side of each (gathered output, reduced input, the tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "c10d":
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            tensors += [
                t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)
            ]
            name = func.__name__.split(".")[0]
            full = tensors[1] if "reduce_scatter" in name else tensors[0]
            self.bytes[name] += full.numel() * full.element_size()
        return func(*args, **(kwargs or {}))


def _one_step(reuse: int):
    import os

    from ds_zero import shm_collectives, wrap

    # Counted at the c10d dispatcher, so the ranks take c10d's collectives rather than the shared-memory
    # ones (those log themselves: test_shm_collectives.py and test_comm_volume.py count what they move).
    os.environ["DS_ZERO_SHM_ALLREDUCE"] = "0"
    shm_collectives.reset()

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(DEPTH)])
    psi_bytes = sum(p.numel() for p in model.parameters()) * 4
    policy = stage3_policy(cap=WIDTH * WIDTH, persist=0, clip=1.0, reuse=reuse)
    trainer = wrap(model, torch.optim.Adam(model.parameters()), policy=policy)
    x = torch.randn(2, WIDTH)
    trainer.backward(model(x).sum())  # the first step records the order units run in (prefetch)
    trainer.step()
    with _Collectives() as seen:
        trainer.backward(model(x).sum())
        trainer.step()
    return psi_bytes, dict(seen.bytes)


@pytest.mark.timeout(120)
def test_three_psi_per_step():
    psi, seen = run_distributed(_one_step, world_size=2, args=(0,))[0]
    assert seen["_allgather_base_"] // psi == 2  # forward and backward gathers ...
    assert seen["_reduce_scatter_base_"] == psi  # ... and one reduce-scatter of the gradients
    # the rest: the rank-agreement tokens and the gradient norm, a few hundred bytes
    assert seen["_allgather_base_"] - 2 * psi + seen["allreduce_"] < 0.01 * psi
    assert sum(seen.values()) < 3.01 * psi


@pytest.mark.timeout(120)
def test_kept_units_are_gathered_once():
    # stage3_max_reuse_distance / max_live_parameters large: units stay gathered until backward
    psi, seen = run_distributed(_one_step, world_size=2, args=(10**9,))[0]
    assert seen["_allgather_base_"] // psi == 1
    assert seen["_reduce_scatter_base_"] == psi
