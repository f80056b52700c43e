"""AutoTP tensor parallelism through the engine on real gloo ranks, against single-process PyTorch.

A tiny transformers Llama (hidden 32, 4 heads, 2 KV heads, 2 layers, vocab 64) trains 10 steps with
``tensor_parallel.autotp_size`` 2 on 2 ranks and 2 x 2 (TP x DP) on 4 ranks at ZeRO 1 and 2, with gradient
clipping below the gradient norm: losses, gradient norms and the full weights
(``_consolidated_16bit_state_dict``) equal the whole model trained in one process on the same global
batches (fp32, 1e-5). Split weights take 1/TP of their size on each rank.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
import tp_workers  # noqa: E402

from ds_comm.testing import run_distributed  # noqa: E402

STEPS = 10
SPLIT = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


def _check(results: list[dict], tp: int) -> None:
    dp = len(results) // tp
    ref_losses, ref_params, ref_norms = tp_workers.reference(STEPS, dp)
    state = results[0]["state"]
    assert state.keys() == ref_params.keys()  # the plain model's keys
    for name, value in ref_params.items():
        assert state[name].shape == value.shape, name
        assert (state[name] - value).abs().max().item() < 1e-5, name
    for r in results:
        assert r["dp"] == dp and r["mp"] == tp
        for step in range(STEPS):
            assert abs(r["losses"][step] - ref_losses[step]) < 1e-5, step
            assert abs(r["norms"][step] - ref_norms[step]) < 1e-5, step
    assert [r["tp_rank"] for r in results] == [i % tp for i in range(len(results))]
    assert all(r["state"] is None for r in results[1:])  # rank 0 gets the full weights, as DeepSpeed
    # memory, counted by elements: split weights hold 1/TP of the full tensor, the rest is replicated
    for r in results:
        for name, full in r["full_numel"].items():
            expected = full // tp if any(s in name for s in SPLIT) and name.endswith("weight") else full
            assert r["local_numel"][name] == expected, name
        split_full = sum(n for k, n in r["full_numel"].items() if any(s in k for s in SPLIT))
        split_local = sum(n for k, n in r["local_numel"].items() if any(s in k for s in SPLIT))
        assert split_local * tp == split_full


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [1, 2])
def test_tp2_on_2_ranks_equals_tp1(stage: int) -> None:
    _check(run_distributed(tp_workers.train_rank, world_size=2, timeout=240, args=(stage, 2, STEPS)), tp=2)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("stage", [1, 2])
def test_tp2_dp2_on_4_ranks_equals_tp1(stage: int) -> None:
    _check(run_distributed(tp_workers.train_rank, world_size=4, timeout=360, args=(stage, 2, STEPS)), tp=2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_save_resume_full_weights_and_gather(tmp_path) -> None:
    results = run_distributed(tp_workers.save_resume_rank, world_size=2, timeout=240, args=(str(tmp_path), 2))
    for r in results:
        assert r["resumed"] == pytest.approx(r["after"], abs=1e-6)  # the resume repeats steps 4-6
        assert r["files"] == [
            "ds_manifest.json",
            "mp_rank_00_model_states.pt",
            "mp_rank_01_model_states.pt",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_0_mp_rank_01_optim_states.pt",
        ]
        assert r["gathered_shape"] == (32, 32) and r["local_shape"] == (16, 32)
        assert r["restored"] and r["moved"]
        assert "saved with tensor-parallel size 2" in r["refused"] and "runs 1" in r["refused"]
    # save_16bit_model wrote full weights after 6 steps: a plain model loads them strictly and computes
    # what the single-process model trained for 6 steps computes
    _, ref_params, _ = tp_workers.reference(6, 1)
    plain = tp_workers.make_model(seed=5)
    plain.load_state_dict(torch.load(tmp_path / "full.bin", weights_only=True), strict=True)
    ref = tp_workers.make_model()
    ref.load_state_dict(ref_params)
    batch = tp_workers.global_batch(99, 1)
    with torch.no_grad():
        assert (plain(**batch).logits - ref(**batch).logits).abs().max().item() < 1e-5
