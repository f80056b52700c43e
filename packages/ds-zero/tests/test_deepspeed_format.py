"""ds_zero.deepspeed_format on real DeepSpeed 0.19.8 rank files, with no process group.

The files are the fixtures of ``tests/engine/test_deepspeed_checkpoint_import.py`` (written by the
reference DeepSpeed on 2 ranks; see ``tests/engine/fixtures/make_deepspeed_checkpoints.py``), where
resuming from them is checked end to end. Here: the slices cover every parameter exactly once, and
consolidate to the weights DeepSpeed had at the checkpoint.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch

from ds_zero import deepspeed_format as df
from ds_zero.sharded_state import consolidate_fp32, full_optimizer_state

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "engine" / "fixtures"
CASES = [
    "ds0.19.8-stage2",
    "ds0.19.8-stage3",
    "ds0.19.8-bf16-stage1",
    "ds0.19.8-bf16-stage3",
    "ds0.19.8-groups-stage2",
    "ds0.19.8-groups-stage3",
]


def _shards(case: str) -> tuple[list[dict], dict]:
    tag = FIXTURES / case / "global_step3"
    model_file = next(p for p in sorted(tag.glob("*model_states.pt")))
    model_state = torch.load(model_file, weights_only=True)
    shards = []
    for path in sorted(glob.glob(str(tag / "*zero_pp_rank_*_optim_states.pt"))):
        content = df.load_deepspeed_file(path)
        assert df.is_deepspeed_optimizer_file(content)
        shards.append(df.slices_from_deepspeed(path, content, model_state["param_shapes"]))
    return shards, model_state


@pytest.mark.parametrize("case", CASES)
def test_slices_cover_each_parameter_once_and_consolidate_to_the_saved_weights(case):
    if not FIXTURES.is_dir():
        pytest.skip("the DeepSpeed fixtures live in the repository's tests/ (not in an installed package)")
    shards, model_state = _shards(case)
    shapes = {name: shape for group in model_state["param_shapes"] for name, shape in group.items()}
    for name, shape in shapes.items():
        ranges = sorted(
            (s["start"], s["end"]) for shard in shards for s in shard["slices"] if s["key"] == name
        )
        covered = [r for r in ranges if r[1] > r[0]]
        assert covered[0][0] == 0 and covered[-1][1] == torch.Size(shape).numel(), (name, ranges)
        assert all(a[1] == b[0] for a, b in zip(covered, covered[1:])), (name, ranges)  # no gap, no overlap
    expected = torch.load(FIXTURES / case / "expected.pt", weights_only=True)["weights_at_checkpoint"]
    weights = consolidate_fp32(shards)
    for name, want in expected.items():
        torch.testing.assert_close(weights[name].to(want.dtype), want, rtol=0, atol=0, msg=name)
    states = full_optimizer_state(shards)
    assert all(
        set(s) == {"exp_avg", "exp_avg_sq", "step"} and float(s["step"]) == 3.0 for s in states.values()
    )


def test_stage3_model_states_hold_placeholders_that_the_slices_fill():
    if not FIXTURES.is_dir():
        pytest.skip("the DeepSpeed fixtures live in the repository's tests/")
    shards, model_state = _shards("ds0.19.8-stage3")
    module = model_state["module"]
    names = df.partitioned_placeholders(module, model_state["param_shapes"])
    assert names == list(module) and all(module[n].numel() == 0 for n in names)
    df.fill_partitioned_weights(module, names, consolidate_fp32(shards))
    assert {n: tuple(t.shape) for n, t in module.items()} == {
        n: tuple(s) for group in model_state["param_shapes"] for n, s in group.items()
    }


def test_unknown_pickled_objects_are_refused(tmp_path):
    from fractions import Fraction

    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"zero_stage": 2, "payload": Fraction(1, 3)}}, path)
    with pytest.raises(df.DeepSpeedCheckpointError, match="cannot be read safely"):
        df.load_deepspeed_file(str(path))
