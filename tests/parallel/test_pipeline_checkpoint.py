"""Pipeline checkpoints: DeepSpeed's one-file-per-layer layout, and resume at another number of stages."""

from __future__ import annotations

import os

import pipe_workers as w
import pytest
import torch

from ds_comm.testing import run_distributed

HALF = w.STEPS // 2


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize(
    "saved,resumed", [((4, 4), (2, 2)), ((2, 2), (4, 4)), ((4, 2), (2, 1))]
)  # (world, stages) -> (world, stages)
def test_resume_at_another_stage_count_equals_uninterrupted(tmp_path, tied: bool, saved, resumed) -> None:
    (w1, p1), (w2, p2) = saved, resumed
    first = run_distributed(
        w.train, world_size=w1, timeout=200, args=(p1, tied, 0, 0, 0, HALF, str(tmp_path))
    )
    tag = tmp_path / f"global_step{HALF}"
    assert (tmp_path / "latest").read_text() == tag.name
    names = sorted(os.listdir(tag))
    layers = [n for n in names if n.startswith("layer_")]
    assert layers == [
        f"layer_{i:02d}-model_states.pt" for i in range(7)
    ]  # parameterless layers too, as DeepSpeed
    assert [n for n in names if n.startswith("mp_rank_")] == [
        f"mp_rank_{s:02d}_model_states.pt" for s in range(p1)
    ]
    # zero_to_fp32 consolidates the per-layer files under PipelineModule's names (any stage count loads it)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    full = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path))
    saved_state = {k: v for r in first for k, v in r["state"].items()}
    assert set(full) == set(saved_state)
    assert all(torch.equal(full[k], saved_state[k]) for k in full)
    second = run_distributed(
        w.train, world_size=w2, timeout=200, args=(p2, tied, 0, 0, HALF, w.STEPS, None, str(tmp_path))
    )
    ref_losses, ref_state = w.reference(tied)
    assert first[-1]["losses"] == pytest.approx(ref_losses[:HALF], rel=1e-5, abs=1e-6)
    for r in second:  # steps HALF.. and the eval loss after them
        assert r["losses"] == pytest.approx(ref_losses[HALF:], rel=1e-5, abs=1e-6)
    seen = set()
    for r in second:
        for name, value in r["state"].items():
            assert torch.allclose(value, ref_state[name], rtol=1e-5, atol=1e-6), name
            seen.add(name)
    assert seen == set(ref_state)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("saved,resumed", [((4, 2), (2, 1)), ((2, 2), (4, 2))])  # (world, stages)
def test_zero1_resume_at_other_stage_and_data_parallel_sizes(tmp_path, saved, resumed) -> None:
    """ZeRO-1 optimizer slices (momentum here) reshard onto another stage count and data-parallel size
    (Note [pipeline ZeRO-1 resharding]); the resumed run equals an uninterrupted one, tied weights included."""
    (w1, p1), (w2, p2) = saved, resumed
    run_distributed(w.train, world_size=w1, timeout=200, args=(p1, True, 0, 1, 0, HALF, str(tmp_path)))
    tag = tmp_path / f"global_step{HALF}"
    slices = sorted(n for n in os.listdir(tag) if n.endswith("_optim_states.pt"))
    assert len(slices) == w1, slices  # one per (stage, data-parallel rank)
    second = run_distributed(
        w.train, world_size=w2, timeout=200, args=(p2, True, 0, 1, HALF, w.STEPS, None, str(tmp_path))
    )
    ref_losses, ref_state = w.reference(True)
    for r in second:
        assert r["losses"] == pytest.approx(ref_losses[HALF:], rel=1e-5, abs=1e-6)
        for name, value in r["state"].items():
            assert torch.allclose(value, ref_state[name], rtol=1e-5, atol=1e-6), name


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "saved,resumed", [((2, 2, 0), (4, 2, 1)), ((4, 2, 1), (2, 1, 0))]
)  # (world, stages, ZeRO stage)
def test_resume_across_zero_0_and_1_equals_uninterrupted(tmp_path, saved, resumed) -> None:
    """A ZeRO-0 save (whole-parameter slices in the stage files) resumes at ZeRO 1, and a ZeRO-1 save (one
    slice file per rank) at ZeRO 0, at other stage and data-parallel sizes too, tied weights included:
    the optimizer's momentum carries over, so the resumed run equals an uninterrupted one."""
    (w1, p1, z1), (w2, p2, z2) = saved, resumed
    run_distributed(w.train, world_size=w1, timeout=200, args=(p1, True, 0, z1, 0, HALF, str(tmp_path)))
    tag = tmp_path / f"global_step{HALF}"
    slices = [n for n in os.listdir(tag) if n.endswith("_optim_states.pt")]
    assert len(slices) == (w1 if z1 == 1 else 0), slices
    second = run_distributed(
        w.train, world_size=w2, timeout=200, args=(p2, True, 0, z2, HALF, w.STEPS, None, str(tmp_path))
    )
    ref_losses, ref_state = w.reference(True)
    for r in second:
        assert r["losses"] == pytest.approx(ref_losses[HALF:], rel=1e-5, abs=1e-6)
        for name, value in r["state"].items():
            assert torch.allclose(value, ref_state[name], rtol=1e-5, atol=1e-6), name
