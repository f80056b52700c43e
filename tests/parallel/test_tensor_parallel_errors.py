"""AutoTP refusals and user partition specs: a clear error naming the module or key, before any split."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

import tp_workers  # noqa: E402
from torch import nn  # noqa: E402

from ds_comm.testing import run_distributed  # noqa: E402
from ds_parallel.tensor import PartitionError, PartitionPlan, partition_model  # noqa: E402

pytestmark = pytest.mark.faults


def test_heads_not_divisible_names_the_key_and_leaves_the_model_whole() -> None:
    model = tp_workers.make_model(kv_heads=1)
    before = {n: p.shape for n, p in model.named_parameters()}
    with pytest.raises(
        PartitionError, match=r"num_key_value_heads=1 is not divisible by the tensor-parallel size 2"
    ):
        partition_model(model, None, 2)
    assert {n: p.shape for n, p in model.named_parameters()} == before


class _Fused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv_proj = nn.Linear(8, 24)
        self.o_proj = nn.Linear(8, 8)


def test_fused_projection_is_named() -> None:
    model = nn.Sequential(_Fused())
    with pytest.raises(PartitionError, match=r"AutoTP cannot partition '0\.qkv_proj': fused projection"):
        partition_model(model, None, 2)
    # a user spec that skips it lets the rest split
    plan = PartitionPlan.from_config(
        {"layer_specs": [{"patterns": [r".*qkv_proj\.weight$"], "partition_type": "skip"}]}
    )
    assert plan.decide("0.qkv_proj", model[0].qkv_proj) == "skip"
    assert plan.decide("0.o_proj", model[0].o_proj) == "row"


def test_bad_partition_type_names_the_entry() -> None:
    with pytest.raises(PartitionError, match=r"layer_specs\[0\]\.partition_type 'diagonal'"):
        PartitionPlan.from_config({"layer_specs": [{"patterns": [".*"], "partition_type": "diagonal"}]})


def test_user_specs_without_defaults() -> None:
    plan = PartitionPlan.from_config(
        {
            "use_default_specs": False,
            "layer_specs": [
                {"patterns": [r".*\.down_proj\.weight$"], "partition_type": "row"},
                {"patterns": [r".*\.(gate|up)_proj\.weight$"], "partition_type": "column"},
            ],
        }
    )
    lin = nn.Linear(4, 4)
    assert [
        plan.decide(n, lin) for n in ("m.mlp.down_proj", "m.mlp.up_proj", "m.self_attn.q_proj", "lm_head")
    ] == ["row", "column", "skip", "skip"]


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_initialize_refuses_clearly() -> None:
    out = run_distributed(tp_workers.refusals_rank, world_size=2, timeout=160)[0]
    assert "num_key_value_heads=1 is not divisible by the tensor-parallel size 2" in out["kv_heads"]
    assert out["kv_heads"].startswith("DeepSpeedConfigError")
    assert "autotp_size' > 1 with ZeRO stage 3 is not supported" in out["stage3"]
    assert "'tensor_parallel.autotp_size' 4" in out["world"] and "not divisible" in out["world"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_user_partition_specs_train_like_tp1() -> None:
    """Only the MLP split (attention replicated, use_default_specs false): still the single-process numbers."""
    specs = {
        "use_default_specs": False,
        "layer_specs": [
            {"patterns": [r".*\.down_proj\.weight$"], "partition_type": "row"},
            {"patterns": [r".*\.(gate|up)_proj\.weight$"], "partition_type": "column"},
        ],
    }
    results = run_distributed(tp_workers.train_rank, world_size=2, timeout=240, args=(2, 2, 4, specs))
    ref_losses, ref_params, _ = tp_workers.reference(4, 1)
    for r in results:
        assert r["losses"] == pytest.approx(ref_losses, abs=1e-5)
        assert r["local_numel"]["model.layers.0.self_attn.q_proj.weight"] == 32 * 32  # replicated
        assert r["local_numel"]["model.layers.0.mlp.up_proj.weight"] == 64 * 32 // 2
    state = results[0]["state"]
    assert max((state[n] - v).abs().max().item() for n, v in ref_params.items()) < 1e-5
    assert tuple(state["lm_head.weight"].shape) == (64, 32)  # the default head split is off with these specs
