"""ZeRO++ hpZ through ``deepspeed.initialize``: ``zero_optimization.zero_hpz_partition_size: 2`` at stage 3.

4 gloo ranks in two secondary groups of 2 train the engine workers' tiny model with AdamW (fp32): the
losses and parameters equal single-process PyTorch; the ``comms_logger`` section reports the parameter
all-gathers of the forward over all 4 ranks and those of the backward inside the group of 2. The
checkpoint saved there loads at plain stage 3 on 2 ranks with the same weights, and training goes on.
"""

from __future__ import annotations

import pytest
import torch
from engine_workers import MICRO, _train, config, global_batch, make_model, reference

from ds_comm.testing import run_distributed

STEPS = 3


def _config(world: int, hpz: int) -> dict:
    cfg = config(world, "adamw", stage=3, comms_logger={"enabled": True})
    # every weight sharded (no persistent ones), each layer its own unit and none kept gathered from its
    # forward to its backward (DeepSpeed's default reuse distance would keep this tiny model's), so
    # backward gathers
    cfg["zero_optimization"].update(
        {
            "reduce_bucket_size": 1000,
            "stage3_param_persistence_threshold": 0,
            "stage3_max_reuse_distance": 0,
            "zero_hpz_partition_size": hpz,
        }
    )
    return cfg


def _full(engine) -> dict[str, torch.Tensor]:
    from ds_zero.stage3 import full_state_dict

    return full_state_dict(engine.module, rank0_only=False)


def _gathers(log) -> set[int]:
    return {r.group_size for r in log.records() if r.op == "all_gather_into_tensor"}


def _last_step_by_phase(engine, world: int):
    """One optimizer step as ``engine_workers._train`` takes it, with the collectives of its first
    micro-step's forward and backward recorded apart (from the log the ``comms_logger`` section fills)."""
    import deepspeed
    from ds_comm import comms_log

    rank, total = deepspeed.comm.get_rank(), torch.zeros(())
    x, y = global_batch(engine.global_steps)
    seen = {}
    for k in range(engine.gradient_accumulation_steps()):
        mine = slice((k * world + rank) * MICRO, (k * world + rank + 1) * MICRO)
        comms_log.clear()
        loss = torch.nn.functional.cross_entropy(engine(x[mine]), y[mine])
        seen.setdefault(
            "forward",
            [(r.group_size, r.nbytes) for r in comms_log.records() if r.op == "all_gather_into_tensor"],
        )
        comms_log.clear()
        total += engine.backward(loss).detach()
        seen.setdefault(
            "backward",
            [(r.group_size, r.nbytes) for r in comms_log.records() if r.op == "all_gather_into_tensor"],
        )
        seen.setdefault(
            "scatters", {r.group_size for r in comms_log.records() if r.op == "reduce_scatter_tensor"}
        )
        engine.step()
    deepspeed.comm.all_reduce(total)
    return total.item() / world, seen


def _train_hpz_and_save(save_dir: str):
    import deepspeed
    from ds_comm import comms_log

    world = deepspeed.comm.get_world_size()
    engine, *_ = deepspeed.initialize(model=make_model(), config=_config(world, hpz=2))
    assert comms_log.LOG.enabled  # the comms_logger section switched the log on
    losses = _train(engine, STEPS - 1, world)
    last, seen = _last_step_by_phase(engine, world)
    losses.append(last)
    weights = _full(engine)
    engine.save_checkpoint(save_dir, client_state={"losses": losses})
    return losses, weights, seen


def _load_plain(save_dir: str):
    import deepspeed

    world = deepspeed.comm.get_world_size()
    engine, *_ = deepspeed.initialize(model=make_model(seed=99), config=_config(world, hpz=1))
    path, client = engine.load_checkpoint(save_dir)
    assert path is not None and engine.global_steps == STEPS
    loaded = _full(engine)
    more = _train(engine, 1, world)
    return loaded, client["losses"] + more, _full(engine)


@pytest.mark.timeout(420)
def test_hpz_engine_numbers_comms_log_and_checkpoint(tmp_path):
    names = [n for n, _ in make_model().named_parameters()]
    at_save, ref_losses, _ = reference(STEPS, "adamw")
    at_end, ref_losses_end, _ = reference(STEPS + 1, "adamw")
    saved = run_distributed(_train_hpz_and_save, world_size=4, timeout=360, args=(str(tmp_path),))
    for losses, weights, seen in saved:
        assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
        for name, want in zip(names, at_save):
            torch.testing.assert_close(weights[name], want, rtol=1e-5, atol=1e-6)
        # the engine's rank-agreement tokens are all-gathers too, over all ranks and of a few bytes:
        # the parameter gathers are the larger ones
        params = {"forward": [], "backward": []}
        for phase in params:
            params[phase] = [size for size, nbytes in seen[phase] if nbytes > 256]
        assert params["forward"] and set(params["forward"]) == {4}, seen["forward"]
        assert params["backward"] and set(params["backward"]) == {2}, seen["backward"]
        assert seen["scatters"] == {4}

    loaded = run_distributed(_load_plain, world_size=2, timeout=200, args=(str(tmp_path),))
    for weights, losses, after in loaded:
        for name in names:  # the weights the hpZ run saved, exactly
            torch.testing.assert_close(weights[name], saved[0][1][name], rtol=0, atol=0)
        # and training goes on as single-process PyTorch does
        assert losses == pytest.approx(ref_losses_end, rel=1e-5, abs=1e-6)
        for name, want in zip(names, at_end):
            torch.testing.assert_close(after[name], want, rtol=1e-5, atol=1e-6)


@pytest.mark.faults
def test_hpz_size_that_does_not_divide_the_ranks_is_an_error_naming_the_key():
    import deepspeed

    cfg = {
        "train_batch_size": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
        "zero_optimization": {"stage": 3, "zero_hpz_partition_size": 2},
    }
    with pytest.raises(
        ValueError,
        match=r"zero_optimization.zero_hpz_partition_size \(2\) must divide the "
        r"data-parallel world size \(1\)",
    ):
        deepspeed.initialize(model=make_model(), config=cfg, dist_init_required=False)

    from ds_engine.zero_policy import policy_from_config

    for sent, applied in ((0, 1), (1, 1), (8, 8)):  # 0, like 1, is off (as in DeepSpeed)
        cfg["zero_optimization"]["zero_hpz_partition_size"] = sent
        assert (
            policy_from_config(deepspeed.DeepSpeedConfig(cfg, world_size=1)).stage3.hpz_partition_size
            == applied
        )
