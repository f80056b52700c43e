"""Stage 3 through the engine: DeepSpeed's stage-3 file layout, zero_to_fp32, and save_16bit_model."""

from __future__ import annotations

import os

import pytest
import torch

from ds_comm.testing import run_distributed


def _train_save_export(ckpt: str, gather: bool):
    import deepspeed

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    cfg = {
        "train_micro_batch_size_per_gpu": 2,
        "bf16": {"enabled": True},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 10,
            "stage3_gather_16bit_weights_on_model_save": gather,
        },
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    for _ in range(3):
        engine.backward(engine(torch.randn(2, 8, dtype=torch.bfloat16)).float().pow(2).mean())
        engine.step()
    engine.save_checkpoint(ckpt)
    exported = engine.save_16bit_model(f"{ckpt}/export")
    full = engine._zero3_consolidated_16bit_state_dict()
    again = engine._consolidated_16bit_state_dict()  # DeepSpeed's other name (OpenRLHF's ZeRO-3 save)
    assert (again is None) == (full is None) and (
        full is None or all(torch.equal(full[k], again[k]) for k in full)
    )
    x = torch.randn(2, 8, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = engine(x)
        engine.empty_partition_cache()  # drops gathered copies; the next forward gathers again
        assert torch.equal(engine(x), before)
    return exported, None if full is None else {k: v.clone() for k, v in full.items()}


def test_consolidated_16bit_state_dict_needs_partitioned_weights():
    import deepspeed

    engine, *_ = deepspeed.initialize(
        model=torch.nn.Linear(3, 3),
        dist_init_required=False,
        config={"train_batch_size": 1, "optimizer": {"type": "Adam", "params": {"lr": 0.1}}},
    )
    with pytest.raises(ValueError, match="stage 3"):
        engine._consolidated_16bit_state_dict()
    engine.empty_partition_cache()  # nothing to drop below stage 3


@pytest.mark.timeout(240)
@pytest.mark.parametrize("gather", [True, False])
def test_stage3_layout_consolidation_and_16bit_export(tmp_path, gather):
    from ds_zero.consolidate import get_fp32_state_dict_from_zero_checkpoint

    (exported0, full0), (exported1, full1) = run_distributed(
        _train_save_export, world_size=2, args=(str(tmp_path), gather)
    )
    assert sorted(os.listdir(tmp_path / "global_step3")) == [
        "ds_manifest.json",
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    assert full1 is None and set(full0) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert all(v.dtype == torch.bfloat16 for v in full0.values())
    fp32 = get_fp32_state_dict_from_zero_checkpoint(tmp_path)
    for name, value in full0.items():
        assert fp32[name].dtype == torch.float32
        torch.testing.assert_close(fp32[name].bfloat16(), value, rtol=0, atol=0)  # masters round to the model
    assert exported0 is gather and exported1 is gather
    if gather:
        saved = torch.load(tmp_path / "export" / "pytorch_model.bin", weights_only=True)
        assert all(torch.equal(saved[k], v) for k, v in full0.items())
    else:
        assert not (tmp_path / "export").exists()


class _Router(torch.nn.Module):
    """Sends each token to the expert its first two features pick: different ranks, different experts."""

    def __init__(self) -> None:
        super().__init__()
        self.experts = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(2))

    def forward(self, x):
        pick = x[:, 0] > x[:, 1]
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            rows = (pick == bool(i)).nonzero()[:, 0]
            if len(rows):
                out = out.index_put((rows,), expert(x[rows]))
        return out


def _train_with_leaf_section(how: str):
    import deepspeed
    from deepspeed.utils import get_z3_leaf_modules, set_z3_leaf_modules, z3_leaf_parameter

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), _Router(), torch.nn.Linear(8, 2))
    zero = {
        "stage": 3,
        "stage3_param_persistence_threshold": 0,
        "stage3_prefetch_bucket_size": 64,
        "reduce_bucket_size": 64,
    }
    if how == "config":
        zero["leaf_module"] = {"classes": ["_Router"]}
    elif how == "api":
        set_z3_leaf_modules(model, [_Router])
    elif how == "granularity":  # the router: 144 elements over 3 layers (its experts and itself)
        zero["stage3_module_granularity_threshold"] = 48
    cfg = {
        "train_micro_batch_size_per_gpu": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
        "zero_optimization": zero,
    }
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    rank = deepspeed.comm.get_rank()
    for _ in range(3):
        x = torch.randn(2, 8)
        x[:, 0] += 10.0 if rank else -10.0  # rank 0 uses expert 0 only, rank 1 expert 1 only
        engine.backward(engine(x).pow(2).mean())
        engine.step()
    return [m is model[1] for m in get_z3_leaf_modules(model)], all(
        z3_leaf_parameter(p) for p in model[1].parameters()
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["config", "api", "granularity"])
def test_leaf_module_by_config_api_or_granularity_trains_divergent_experts(how):
    for leaves, marked in run_distributed(_train_with_leaf_section, world_size=2, args=(how,)):
        assert leaves == [True] and marked


def _custom_load_at_stage3(ckpt: str):
    import deepspeed

    cfg = {
        "train_micro_batch_size_per_gpu": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    }

    def build(seed: int):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
        return deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)[0]

    engine = build(0)
    engine.backward(engine(torch.randn(2, 8)).pow(2).mean())
    engine.step()
    engine.save_checkpoint(ckpt)
    saved = engine._zero3_consolidated_16bit_state_dict()

    def doubled(src, dst):  # writes full tensors: the parameters are gathered while it runs
        with torch.no_grad():
            for name, p in dst.named_parameters():
                p.copy_(src[name] * 2)

    fresh = build(7)
    fresh.load_checkpoint(ckpt, load_optimizer_states=False, custom_load_fn=doubled)
    loaded = fresh._zero3_consolidated_16bit_state_dict()
    return None if saved is None else {k: (saved[k], loaded[k]) for k in saved}


@pytest.mark.timeout(240)
def test_custom_load_fn_writes_through_gathered_parameters_at_stage3(tmp_path):
    pairs, other = run_distributed(_custom_load_at_stage3, world_size=2, args=(str(tmp_path),))
    assert other is None and set(pairs) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for name, (saved, loaded) in pairs.items():
        torch.testing.assert_close(loaded, saved * 2, rtol=0, atol=0, msg=name)
