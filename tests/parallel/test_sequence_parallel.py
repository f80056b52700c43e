"""Ulysses sequence parallelism through the engine on real gloo ranks, against single-process PyTorch.

A tiny transformers Llama (4 heads, 2 KV heads) trains 10 steps with sequence parallelism 2 on 2 ranks
and 2 x 2 on 4 ranks, at ZeRO 2 and 3: losses and weights equal the same model trained without
sequence parallelism on the same global batches (fp32, 1e-5).
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import sp_workers  # noqa: E402

from ds_comm.testing import run_distributed  # noqa: E402

STEPS = 10


def _check(results: list[dict], steps: int, dp: int) -> None:
    ref_losses, ref_params = sp_workers.reference(steps, dp)
    for r in results:
        assert r["params"].keys() == ref_params.keys()
        for name, value in ref_params.items():
            assert (r["params"][name] - value).abs().max().item() < 1e-5, name
    # every rank of a data-parallel group reports its group's whole-sequence loss; their mean is the reference's
    sp = len(results) // dp
    for step in range(steps):
        per_group = [results[g * sp]["losses"][step] for g in range(dp)]
        assert all(
            abs(results[g * sp + s]["losses"][step] - per_group[g]) < 1e-6
            for g in range(dp)
            for s in range(sp)
        )
        assert abs(sum(per_group) / dp - ref_losses[step]) < 1e-5, step


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_sp2_on_2_ranks_equals_no_sp(stage: int) -> None:
    """Stage 0 too: gradients are averaged over the sequence+data group at every stage (Note [sp groups])."""
    results = run_distributed(sp_workers.train_sp, world_size=2, timeout=240, args=(stage, 2, STEPS))
    assert [(r["dp"], r["seq_dp"], r["sp"], r["train_batch_size"]) for r in results] == [(1, 2, 2, 2)] * 2
    _check(results, STEPS, dp=1)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("stage", [2, 3])
def test_sp2_x_dp2_on_4_ranks_equals_no_sp(stage: int) -> None:
    results = run_distributed(sp_workers.train_sp, world_size=4, timeout=360, args=(stage, 2, STEPS))
    assert [(r["dp"], r["seq_dp"], r["sp"], r["train_batch_size"]) for r in results] == [(2, 4, 2, 4)] * 4
    _check(results, STEPS, dp=2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sequence_parallel_size_from_config_alone() -> None:
    """``sequence_parallel_size`` in the config builds the groups without an mpu (ZeRO 1)."""
    results = run_distributed(sp_workers.train_sp, world_size=2, timeout=240, args=(1, 2, 3, "config"))
    _check(results, 3, dp=1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_activation_checkpointing_with_sp_equals_no_sp() -> None:
    """HF gradient checkpointing recomputes the forward (and its all-to-alls) in backward: still exact."""
    results = run_distributed(sp_workers.train_sp, world_size=2, timeout=240, args=(3, 2, 4, "mpu", True))
    _check(results, 4, dp=1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bf16_with_sp_tracks_bf16_without_sp() -> None:
    """bf16 rounds differently when attention runs on head shards; losses stay within bf16's precision."""
    results = run_distributed(
        sp_workers.train_sp, world_size=2, timeout=240, args=(2, 2, 5, "mpu", False, True)
    )
    (plain,) = run_distributed(sp_workers.train_plain_bf16, world_size=1, timeout=240, args=(2, 5))
    for step in range(5):
        assert results[0]["losses"][step] == pytest.approx(plain[step], rel=2e-2), (
            results[0]["losses"],
            plain,
        )


@pytest.mark.timeout(200)
def test_a_second_engine_without_sp_keeps_the_sequence_groups() -> None:
    for out in run_distributed(sp_workers.second_engine_keeps_groups, world_size=2, timeout=150):
        assert out == {"sp_after": 2, "main_group": True, "ref_group": None, "ref_dp": 2}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sp4_with_fewer_kv_heads_than_ranks_equals_no_sp() -> None:
    """SP 4 > 2 KV heads: each KV head is repeated so every rank gets one (MQA/GQA); ZeRO 2, 4 ranks."""
    results = run_distributed(sp_workers.train_sp, world_size=4, timeout=360, args=(2, 4, 5))
    assert [(r["dp"], r["seq_dp"], r["sp"]) for r in results] == [(1, 4, 4)] * 4
    _check(results, 5, dp=1)
