"""Resuming MoE training with its optimizer state (expert and shared Adam moments and step, ZeRO 0-2).

A resumed run must continue as the uninterrupted one: losses and weights to 1e-6 at the same sizes; at
another ep size the same arithmetic up to the order of the expert-gradient sums (1e-5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import moe_resume_workers as R  # noqa: E402 - rank functions live in an importable module
import pytest
import torch

from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from ds_comm.testing import run_distributed
from ds_zero.deepspeed_format import read_optimizer_shards
from ds_zero.sharded_state import consolidate_fp32, full_optimizer_state


def _by_rank(results: list[dict[str, Any]]) -> tuple[list[list[float]], dict[str, torch.Tensor]]:
    weights: dict[str, torch.Tensor] = {}
    for res in results:
        assert "error" not in res, res.get("error")
        weights.update(res["weights"])
    return [res["losses"] for res in results], weights


def _roundtrip(
    tmp_path: Path, world: int, stage: int, save_ep: int, load_stage: int, load_ep: int, bf16: bool = False
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    res = run_distributed(
        R.roundtrip_rank,
        world_size=world,
        timeout=200,
        args=(str(tmp_path), stage, save_ep, load_stage, load_ep, bf16),
    )
    return [r["reference"] for r in res], [r["resumed"] for r in res]


def _assert_same(ref: list[dict[str, Any]], got: list[dict[str, Any]], tol: float) -> None:
    ref_losses, ref_weights = _by_rank(ref)
    got_losses, got_weights = _by_rank(got)
    torch.testing.assert_close(torch.tensor(got_losses), torch.tensor(ref_losses), rtol=0, atol=tol)
    assert sorted(got_weights) == sorted(ref_weights)
    for name, w in ref_weights.items():
        torch.testing.assert_close(got_weights[name], w, rtol=0, atol=tol, msg=name)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("world", "stage", "bf16"), [(2, 0, False), (2, 1, False), (2, 2, False), (4, 1, False), (2, 1, True)]
)
def test_resume_continues_the_uninterrupted_run(tmp_path: Path, world: int, stage: int, bf16: bool) -> None:
    """ep 2 on 2 ranks (ZeRO 0, 1, 2; bf16 at 1: fp32 masters from the checkpoint, not from the bf16 weights)
    and ep 2 x dp 2 on 4 ranks (ZeRO 1, expert states sharded over the expert-data-parallel pair): load
    with the defaults."""
    ref, got = _roundtrip(tmp_path, world, stage, 2, stage, 2, bf16=bf16)
    assert all(res["global_steps"] == R.SAVED for res in got)
    _assert_same(ref, got, 1e-6)
    names = sorted(p.name for p in (tmp_path / "t").iterdir())
    if stage == 0:  # DeepSpeed's per-ep-rank optimizer files; the model states hold no optimizer
        assert [n for n in names if n.endswith("_optim_states.pt")] == [
            "expp_rank_0_mp_rank_00_optim_states.pt",
            "expp_rank_1_mp_rank_00_optim_states.pt",
        ]
        assert (
            torch.load(tmp_path / "t" / "mp_rank_00_model_states.pt", weights_only=True)["optimizer"] is None
        )
    else:
        assert [n for n in names if n.endswith("_optim_states.pt")] == [
            f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)
        ]
    # zero_to_fp32: the whole model, every expert under its global index, from the fp32 masters
    full = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path), tag="t")
    saved = {name: w for res in ref for name, w in res["saved_weights"].items()}
    assert sorted(full) == sorted(saved)
    for name, w in saved.items():
        torch.testing.assert_close(full[name].to(w.dtype), w, rtol=0, atol=1e-2 if bf16 else 0, msg=name)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("stage", "save_ep", "load_stage", "load_ep"), [(1, 2, 1, 1), (0, 1, 2, 2)])
def test_resume_at_another_ep_size(
    tmp_path: Path, stage: int, save_ep: int, load_stage: int, load_ep: int
) -> None:
    """Each expert's moments follow it to the rank that holds it at the new ep size (and ZeRO stage)."""
    ref, got = _roundtrip(tmp_path, 2, stage, save_ep, load_stage, load_ep)
    _assert_same(ref, got, 1e-5)


@pytest.mark.timeout(240)
def test_resume_at_another_ep_and_dp_size_holds_each_experts_state(tmp_path: Path) -> None:
    """Saved at ep 2 on 2 ranks (ZeRO 1), loaded at ep 4 on 4 ranks: each rank holds exactly the saved fp32
    masters, Adam moments and step of its experts (one each) and of its quarter of the shared parameters."""
    run_distributed(R.reshard_rank, world_size=2, timeout=200, args=(str(tmp_path), 1, 2, "save"))
    files = sorted(str(p) for p in (tmp_path / "t").glob("zero_pp_rank_*_optim_states.pt"))
    saved_shards = read_optimizer_shards(files, None)
    saved, fp32 = full_optimizer_state(saved_shards), consolidate_fp32(saved_shards)
    held = run_distributed(R.reshard_rank, world_size=4, timeout=200, args=(str(tmp_path), 1, 4, "load"))
    covered: dict[str, int] = {}
    for rank, pieces in enumerate(held):
        experts = {p["key"] for p in pieces if "deepspeed_experts." in p["key"]}
        assert experts == {
            f"moe.deepspeed_moe.experts.deepspeed_experts.{rank}.{n}" for n in ("weight", "bias")
        }
        for p in pieces:
            a, b = p["start"], p["end"]
            torch.testing.assert_close(p["fp32"], fp32[p["key"]].flatten()[a:b], rtol=0, atol=0)
            for k in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(p["state"][k], saved[p["key"]][k].flatten()[a:b], rtol=0, atol=0)
            assert p["step"] == R.SAVED
            covered[p["key"]] = covered.get(p["key"], 0) + b - a
    assert covered == {k: v.numel() for k, v in fp32.items()}  # every element held once, nothing missing


@pytest.mark.faults
@pytest.mark.timeout(240)
def test_local_expert_keys_are_refused_and_weights_only_loads(tmp_path: Path) -> None:
    """A checkpoint whose expert optimizer state is keyed by local expert (an earlier version's save; DeepSpeed's
    files too) is refused with the way out; load_optimizer_states=False then restores every weight."""
    run_distributed(R.resume_rank, world_size=2, timeout=200, args=(1, 2, str(tmp_path), "reference"))
    folder = tmp_path / "t"
    (folder / "ds_manifest.json").unlink()  # as an earlier version wrote it: no manifest, no marker
    states = torch.load(folder / "mp_rank_00_model_states.pt", weights_only=True)
    del states["ds_manifest"]
    torch.save(states, folder / "mp_rank_00_model_states.pt")
    for r in range(2):
        path = folder / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
        content = torch.load(path, weights_only=True)
        del content["optimizer_state_dict"]["moe_expert_keys"]
        torch.save(content, path)
    refused = run_distributed(R.resume_rank, world_size=2, timeout=200, args=(1, 2, str(tmp_path), "resume"))
    for res in refused:
        assert "not keyed by global expert" in res["error"] and "ep_size [2]" in res["error"]
        assert "load_optimizer_states=False" in res["error"]
    loaded = run_distributed(
        R.resume_rank,
        world_size=2,
        timeout=200,
        args=(1, 2, str(tmp_path), "resume", {"load_optimizer_states": False}),
    )
    assert all(res["global_steps"] == R.SAVED for res in loaded)
