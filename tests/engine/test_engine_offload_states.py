"""``engine.offload_states`` / ``reload_states`` (ds_zero.state_offload) in an OpenRLHF-style loop on 2
gloo ranks: every kind of state, alone and together, at stages 0-3 in fp32 and bf16, and training
continues bit-identical to a run that never offloaded. On this CPU machine the states are copied into
new host buffers and back (the same code path that moves them off a GPU), so a view left pointing at
an old buffer, or a state put back in the wrong place, changes the numbers."""

from __future__ import annotations

import offload_states_workers as w
import pytest
import torch

from ds_comm.testing import run_distributed

ALL = None
EACH = [["optim_states"], ["hp_params"], ["lp_params"], ["lp_grads", "contiguous_grad_buffer"], ALL]


def _both(stage: int, precision: str):
    plain = w.run(stage, precision, None)
    moved = w.run(stage, precision, EACH)
    return plain, moved


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_offload_and_reload_leave_training_bit_identical(stage: int, precision: str) -> None:
    for plain, moved in run_distributed(_both, world_size=2, args=(stage, precision), timeout=280):
        assert moved["losses"] == plain["losses"] and moved["exports"] == plain["exports"]
        assert all(torch.equal(a, b) for a, b in zip(moved["params"], plain["params"]))
        assert len(moved["errors"]) == w.STEPS and all("reload_states()" in e for e in moved["errors"])


def test_offload_states_arguments() -> None:
    import deepspeed
    from deepspeed.runtime.zero.offload_config import OffloadDeviceEnum, OffloadStateTypeEnum

    engine, *_ = deepspeed.initialize(
        model=w.make_model(),
        dist_init_required=False,
        config={"train_batch_size": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}},
    )
    with pytest.raises(ValueError, match="nvme"):
        engine.offload_states(device=OffloadDeviceEnum.nvme)
    with pytest.raises(ValueError):
        engine.offload_states(include=["not_a_state"])
    engine.offload_states(device=OffloadDeviceEnum.none)  # a warning, nothing moved
    engine.backward(engine(torch.randn(2, 6)).sum())
    engine.offload_states(include=[OffloadStateTypeEnum.optim_states], non_blocking=True)
    with pytest.raises(RuntimeError, match="optim_states"):
        engine.step()
    engine.reload_states(non_blocking=True)
    engine.step()
