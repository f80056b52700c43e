"""Stage-3 model-state memory per rank, counted neutrally: at most 16Ψ/N plus what is gathered.

Every live tensor in the rank is found through ``gc`` and counted once per storage (as in
``test_memory.py``). For Ψ parameters on N ranks with Adam, stage 3 keeps fp32 shards 4Ψ/N (also the
masters), gradient shards 4Ψ/N and Adam states 8Ψ/N. After backward and after the step nothing is
gathered; during forward at most the running unit and the one being prefetched are, beside the
saved activations. Keeping the whole model on every rank would need 16Ψ and fails every bound.
"""

from __future__ import annotations

import pytest
import torch
from _models import live_tensor_bytes
from _stage3_models import stage3_policy

import ds_comm
from ds_comm.testing import run_distributed

WIDTH, DEPTH, BATCH = 256, 8, 4


def _measure():
    from ds_zero import wrap

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(DEPTH)])
    psi = sum(p.numel() for p in model.parameters())
    unit = WIDTH * WIDTH  # one layer per unit; nothing kept gathered between forward and backward
    trainer = wrap(model, torch.optim.Adam(model.parameters()), policy=stage3_policy(cap=unit, persist=0))
    readings: dict[str, int] = {}
    model[-1].register_forward_hook(
        lambda *_: readings.__setitem__(f"in_forward_{step}", live_tensor_bytes())
    )
    x = torch.randn(BATCH, WIDTH)
    for step in range(2):
        loss = model(x).pow(2).mean()
        trainer.backward(loss)
        del loss
        readings[f"after_backward_{step}"] = live_tensor_bytes()
        trainer.step()
        readings[f"after_step_{step}"] = live_tensor_bytes()
    return psi, unit, ds_comm.get_world_size(), readings


@pytest.mark.timeout(240)
@pytest.mark.parametrize("world", [2, 4])
def test_model_states_within_16_psi_over_n(world):
    for psi, unit, n, readings in run_distributed(_measure, world_size=world, timeout=220):
        states = 16 * psi / n + 1024  # + scalars: Adam's step counters, the gradient norm
        batch = BATCH * WIDTH * 4
        for when, used in readings.items():
            if when.startswith("in_forward"):
                # the running unit and the prefetched one (fp32), plus every layer's saved input
                bound = states + 2 * unit * 4 + (DEPTH + 1) * batch
            else:
                bound = states + batch
            assert used <= bound, f"N={n} {when}: {used / psi:.2f} bytes/param > bound {bound / psi:.2f}"
        assert 16 * psi > states + 2 * unit * 4 + (DEPTH + 1) * batch  # the bound excludes full replication
