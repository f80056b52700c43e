"""ZeRO++ hpZ at stage 3 (``zero_hpz_partition_size``; Note [hpZ] in ``ds_zero.stage3.policy``).

On 4 gloo ranks in two secondary groups of 2: the numbers equal plain stage 3 and single-process
PyTorch (fp32, AdamW, several steps); the project's log of collectives (``ds_comm.comms_log``, which
now sees FSDP2's gathers and reduce-scatters) shows the forward all-gathers over all 4 ranks, the
backward ones inside the group of 2 (consecutive ranks) and the gradient reduce-scatters over all 4;
the secondary process groups are created once for the model, not once per shard unit. Under bf16 and
under CPU offload, hpZ changes no loss at all.
"""

from __future__ import annotations

import pytest
import torch
from _stage3_models import stage3_policy
from torch import nn

from ds_comm.testing import run_distributed

WIDTH, DEPTH, STEPS, MICRO, LR = 16, 3, 4, 2, 1e-2


def _model() -> nn.Module:
    torch.manual_seed(0)
    layers = [m for _ in range(DEPTH) for m in (nn.Linear(WIDTH, WIDTH), nn.Tanh())]
    return nn.Sequential(*layers, nn.Linear(WIDTH, 1))


def _batches(world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(3)
    return [
        (torch.randn(MICRO * world, WIDTH, generator=gen), torch.randn(MICRO * world, 1, generator=gen))
        for _ in range(STEPS)
    ]


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)


def _reference() -> tuple[list[float], dict[str, torch.Tensor]]:
    """Single-process PyTorch on the global batches (4 ranks' worth)."""
    model = _model()
    opt = _optimizer(model)
    losses = []
    for x, y in _batches(4):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _records(log, op: str) -> list[tuple[int, int]]:
    return [(r.group_size, r.nbytes) for r in log.records() if r.op == op]


def _train(hpz: int, dtype: torch.dtype = torch.float32, offload: bool = False):
    """Stage 3 (each Linear weight its own unit, biases sharded too) on this rank's share; per step the
    global loss, and for the last step the collectives of the forward and of the backward."""
    import ds_comm
    from ds_comm import comms_log
    from ds_zero import wrap
    from ds_zero.stage3 import full_state_dict

    rank, world = ds_comm.get_rank(), ds_comm.get_world_size()
    model = _model()
    groups_before = torch.distributed.distributed_c10d._world.group_count
    # no rank-agreement tokens (Note [divergence]): every all-gather logged is then a parameter gather
    policy = stage3_policy(
        cap=WIDTH * WIDTH + WIDTH,
        persist=0,
        hpz_partition_size=hpz,
        detect_divergence=False,
        dtype=dtype,
        offload=offload,
    )
    trainer = wrap(model, _optimizer(model), policy=policy)
    groups = torch.distributed.distributed_c10d._world.group_count - groups_before  # new_group calls
    mine = slice(rank * MICRO, (rank + 1) * MICRO)
    losses, seen, meshes = [], {}, []
    for x, y in _batches(world):
        with comms_log.capture() as log:
            loss = nn.functional.mse_loss(model(x[mine].to(dtype)).float(), y[mine])
            seen["forward"] = _records(log, "all_gather_into_tensor")
            # the secondary shards a unit holds between its forward and its backward, and their mesh
            meshes = [p.device_mesh.mesh.tolist() for p in model[0].parameters()]
            log.clear()
            trainer.backward(loss)
            seen["backward"] = _records(log, "all_gather_into_tensor")
            seen["reduce_scatter"] = _records(log, "reduce_scatter_tensor")
        assert trainer.step()
        total = loss.detach().clone()
        ds_comm.all_reduce(total)
        losses.append(total.item() / world)
    return losses, full_state_dict(model, rank0_only=False), seen, meshes, groups


def _both():
    return _train(1), _train(2)


def _bf16_and_offload():
    """Losses per step without and with hpZ, under bf16 and under CPU offload of the shards."""
    return {
        (str(dtype), offload): (_train(1, dtype, offload)[0], _train(2, dtype, offload)[0])
        for dtype, offload in ((torch.bfloat16, False), (torch.float32, True))
    }


@pytest.mark.timeout(240)
def test_hpz_numbers_and_where_the_gathers_go():
    ref_losses, ref_state = _reference()
    results = run_distributed(_both, world_size=4, timeout=200)
    for rank, (plain, hpz) in enumerate(results):
        for losses, state in (plain[:2], hpz[:2]):
            assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
            for key, want in ref_state.items():
                torch.testing.assert_close(state[key], want, rtol=1e-5, atol=1e-6)
        assert hpz[0] == pytest.approx(plain[0], rel=1e-5, abs=1e-6)
        for key in ref_state:
            torch.testing.assert_close(hpz[1][key], plain[1][key], rtol=1e-5, atol=1e-6)

        plain_seen, hpz_seen = plain[2], hpz[2]
        # forward: every unit gathered over the whole data-parallel group, with or without hpZ
        assert {size for size, _ in hpz_seen["forward"]} == {4}
        assert hpz_seen["forward"] == plain_seen["forward"]
        # backward: the same bytes, gathered inside the secondary group of 2 instead of over all 4
        assert plain_seen["backward"] and {size for size, _ in plain_seen["backward"]} == {4}
        assert {size for size, _ in hpz_seen["backward"]} == {2}
        assert sum(b for _, b in hpz_seen["backward"]) == sum(b for _, b in plain_seen["backward"])
        # gradients: still reduce-scattered over all 4 ranks, the same bytes
        assert {size for size, _ in hpz_seen["reduce_scatter"]} == {4}
        assert hpz_seen["reduce_scatter"] == plain_seen["reduce_scatter"]
        # the secondary groups are consecutive ranks: {0, 1} and {2, 3}
        assert hpz[3] and all(mesh == [[0, 1], [2, 3]] for mesh in hpz[3]), (rank, hpz[3])
        assert all(mesh == [0, 1, 2, 3] for mesh in plain[3])
        # one set of secondary groups ({0,1}, {2,3} and across them {0,2}, {1,3}) for the model's 4 units,
        # not one set per unit (Note [one secondary mesh]); plain stage 3 creates none
        assert (plain[4], hpz[4]) == (0, 4)


@pytest.mark.faults
def test_hpz_partition_size_is_validated():
    from ds_zero.stage3 import Stage3Policy, Zero3Policy
    from ds_zero.stage3.policy import hpz_group_size

    for bad in (0, -2, 1.5, True):
        with pytest.raises(
            ValueError, match="zero_optimization.zero_hpz_partition_size must be an integer >= 1"
        ):
            Stage3Policy(hpz_partition_size=bad)
    policy = Zero3Policy(stage3=Stage3Policy(hpz_partition_size=4))
    assert hpz_group_size(policy, world_size=8) == 4
    assert hpz_group_size(Zero3Policy(), world_size=6) == 1
    for world in (6, 2, 1):
        with pytest.raises(
            ValueError,
            match=r"zero_hpz_partition_size \(4\) must divide the data-parallel world "
            rf"size \({world}\)",
        ):
            hpz_group_size(policy, world_size=world)


@pytest.mark.timeout(240)
def test_hpz_under_bf16_and_offload_changes_no_number():
    # the secondary shard is cut from the gathered bf16 copy, so backward sees the very same values
    for runs in run_distributed(_bf16_and_offload, world_size=4, timeout=200):
        for plain, hpz in runs.values():
            assert hpz == plain
