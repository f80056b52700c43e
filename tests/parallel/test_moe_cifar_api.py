"""The API surface DeepSpeedExamples' CIFAR tutorial uses with --moe, without the script (CI has no mirror):
MoE layers at ep 2 in a conv net, split_params_into_different_moe_groups_for_optimizer, initialize with args,
training_data and the tutorial's config (Adam, WarmupLR, clipping), at ZeRO 0 and 2, then evaluation."""

from __future__ import annotations

import math

import moe_workers as W  # noqa: E402 - rank functions live in an importable module
import pytest
import torch

from ds_comm.testing import run_distributed


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("stage", "moe_param_group"), [(0, True), (2, True), (0, False)])
def test_tutorial_api_on_2_ranks(stage: int, moe_param_group: bool) -> None:
    r0, r1 = run_distributed(W.tutorial_rank, world_size=2, timeout=200, args=(stage, moe_param_group))
    for res in (r0, r1):
        assert len(res["losses"]) == 4 and all(math.isfinite(v) for v in res["losses"])
        assert res["has_moe"] == (True, 2) and res["engine_has_moe"] and res["num_experts"] == [2, 4]
        # the expert parameters are in optimizer groups of their own, named after their expert group
        assert [(name, moe) for name, moe, _ in res["groups"] if moe] == [("ep_size_2", True)]
        assert len(res["predicted"]) == 4
    for name, w in r0["shared"].items():  # shared weights stay identical on both ranks
        torch.testing.assert_close(w, r1["shared"][name], rtol=0, atol=0)
    # each rank holds different experts (distinct weights after training, not a broadcast copy)
    assert any(not torch.equal(w, r1["experts"][n]) for n, w in r0["experts"].items())
