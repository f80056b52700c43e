"""MoE checkpoints in DeepSpeed's layout: one file per global expert, resumable at the same and another ep size."""

from __future__ import annotations

from pathlib import Path

import moe_workers as W  # noqa: E402 - rank functions live in an importable module
import pytest
import torch

from ds_comm.testing import run_distributed


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("stage", "save_ep", "load_ep"), [(0, 2, 2), (2, 2, 2), (0, 2, 1), (1, 1, 2)])
def test_expert_files_and_resume(tmp_path: Path, stage: int, save_ep: int, load_ep: int) -> None:
    saved = run_distributed(
        W.checkpoint_rank, world_size=2, timeout=200, args=(stage, save_ep, str(tmp_path), "save")
    )
    names = sorted(p.name for p in (tmp_path / "t3").iterdir())
    for e in range(W.EXPERTS):  # DeepSpeed's names: one file per global expert of MoE layer 0
        assert f"layer_0_expert_{e}_mp_rank_00_model_states.pt" in names
    expert_file = torch.load(
        tmp_path / "t3" / "layer_0_expert_3_mp_rank_00_model_states.pt", weights_only=True
    )
    assert sorted(expert_file) == [
        "moe.deepspeed_moe.experts.deepspeed_experts.3.bias",
        "moe.deepspeed_moe.experts.deepspeed_experts.3.weight",
    ]
    want = {}
    for res in saved:
        want.update(res["weights"])
    loaded = run_distributed(
        W.checkpoint_rank, world_size=2, timeout=200, args=(stage, load_ep, str(tmp_path), "load")
    )
    for res in loaded:
        assert res["global_steps"] == 3
        assert (
            res["refused"] is None
        )  # expert optimizer states are saved per global expert: any ep size loads
        for name, w in res["weights"].items():
            torch.testing.assert_close(w, want[name], rtol=0, atol=0, msg=name)


@pytest.mark.faults
@pytest.mark.timeout(300)
def test_other_expert_count_is_a_clear_error(tmp_path: Path) -> None:
    run_distributed(W.checkpoint_rank, world_size=2, timeout=200, args=(0, 2, str(tmp_path), "save"))
    (tmp_path / "t3" / "layer_0_expert_3_mp_rank_00_model_states.pt").unlink()
    with pytest.raises(Exception, match="needs expert 3 of 4"):
        run_distributed(W.checkpoint_rank, world_size=2, timeout=200, args=(0, 2, str(tmp_path), "load"))
