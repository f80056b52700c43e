"""The stage-3 unit rule (ds_zero.stage3.plan, Note [units]) on plain module trees: no process group."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ds_zero import ReducePolicy
from ds_zero.policy import OffloadPolicy
from ds_zero.stage3.external import (
    external_parameters,
    register_external_parameter,
    unregister_external_parameter,
)
from ds_zero.stage3.plan import plan_units
from ds_zero.stage3.policy import Stage3Policy, Zero3Policy, unit_cap


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln, self.fc1, self.fc2 = nn.LayerNorm(16), nn.Linear(16, 48), nn.Linear(48, 16)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.ln(x))))


class TinyGPT(nn.Module):
    def __init__(self, tie: bool = False) -> None:
        super().__init__()
        self.wte = nn.Embedding(100, 16)
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.head = nn.Linear(16, 100)
        if tie:
            self.head.weight = self.wte.weight

    def forward(self, idx):
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


# Parameters of at most this many elements stay whole: the blocks' biases and norms (48 and 16), not
# the head's 100-element bias.
SMALL = 99


def _names(plan):
    return [plan.names[id(u)] for u in plan.units]


def test_units_are_the_largest_closed_modules_under_the_cap():
    model = TinyGPT()
    plan = plan_units(model, cap=2000, persistence_threshold=SMALL)
    # the ModuleList has no forward of its own, so its blocks are the units; the root comes last
    assert _names(plan) == ["wte", "blocks.0", "blocks.1", "blocks.2", "head", ""]
    assert plan.numel[id(model.blocks[0])] == 16 * 48 + 48 * 16  # its biases and norm stay whole
    assert plan.numel[id(model)] == 0
    small = {id(p) for p in plan.persistent}
    assert all(id(p) in small for b in model.blocks for p in (b.ln.weight, b.ln.bias, b.fc1.bias, b.fc2.bias))
    assert id(model.head.bias) not in small  # 100 elements: above the threshold


def test_tied_weight_goes_to_the_common_parent():
    model = TinyGPT(tie=True)
    plan = plan_units(model, cap=2000, persistence_threshold=SMALL)
    assert _names(plan) == ["blocks.0", "blocks.1", "blocks.2", ""]
    assert plan.numel[id(model)] == 100 * 16 + 100  # the shared weight once, plus the head's bias


def test_external_parameter_joins_its_user_and_owner():
    model = TinyGPT()
    register_external_parameter(model.blocks[2].fc1, model.wte.weight)
    try:
        plan = plan_units(model, cap=2000, persistence_threshold=SMALL, external=external_parameters)
    finally:
        unregister_external_parameter(model.blocks[2].fc1, model.wte.weight)
    # blocks.2 and wte can no longer be units apart; blocks.2's other layer still can
    assert _names(plan) == ["blocks.0", "blocks.1", "blocks.2.fc2", "head", ""]
    assert plan.numel[id(model)] == 100 * 16 + 16 * 48


def test_small_model_is_one_unit_and_big_leaves_are_units():
    model = TinyGPT()
    assert _names(plan_units(model, cap=10**6, persistence_threshold=SMALL)) == [""]
    wide = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 2))
    plan = plan_units(wide, cap=100, persistence_threshold=0)
    assert _names(plan) == ["0", "1", ""]  # a leaf above the cap cannot be split: a unit anyway


def test_scalars_always_stay_whole():
    model = nn.Sequential(nn.Linear(4, 4))
    model.register_parameter("scale", nn.Parameter(torch.tensor(1.0)))
    plan = plan_units(model, cap=10, persistence_threshold=0)
    assert [p.dim() for p in plan.persistent] == [0]


def test_keep_gathered_follows_reuse_distance_and_live_bound():
    model = TinyGPT()
    per_block, ends = 16 * 48 * 2, 1600
    everything = plan_units(
        model, cap=2000, persistence_threshold=SMALL, max_reuse_distance=10**9, max_live=10**9
    )
    assert len(everything.keep_gathered) == 5  # every unit but the root (FSDP2 keeps the root itself)
    nothing = plan_units(model, cap=2000, persistence_threshold=SMALL, max_reuse_distance=0, max_live=10**9)
    assert nothing.keep_gathered == {id(model.head)}  # nothing runs between its forward and backward
    # head (1700) and blocks.2 are within 2 x (later units) <= distance; the live bound stops at 2 units
    some = plan_units(
        model,
        cap=2000,
        persistence_threshold=SMALL,
        max_reuse_distance=2 * 1700 + 2 * per_block,
        max_live=1700 + per_block + ends // 2,
    )
    assert some.keep_gathered == {id(model.head), id(model.blocks[2])}


def test_one_rank_makes_one_unit_when_live_bound_allows():
    policy = Zero3Policy(
        reduce=ReducePolicy(bucket_numel=10**6), stage3=Stage3Policy(prefetch_bucket_numel=1000)
    )
    assert unit_cap(policy, world_size=2, model_numel=5000) == 1000
    assert unit_cap(policy, world_size=1, model_numel=5000) == 5000
    tight = Zero3Policy(stage3=Stage3Policy(prefetch_bucket_numel=1000, max_live_parameters=4000))
    assert unit_cap(tight, world_size=1, model_numel=5000) == 1000
    for device in ("cpu", "nvme"):  # offloaded parameters: the units bound what is gathered, even on one rank
        offloaded = dataclasses.replace(policy, offload=OffloadPolicy(param_device=device))
        assert unit_cap(offloaded, world_size=1, model_numel=5000) == 1000


def test_persistence_threshold_is_inclusive_and_capped_by_the_model_threshold():
    model = TinyGPT()
    at = plan_units(model, cap=2000, persistence_threshold=100)
    assert id(model.head.bias) in {id(p) for p in at.persistent}  # numel <= threshold, as in DeepSpeed
    # the cap counts persistent elements in model order: the first block's four small tensors
    # (16 + 16 + 48 + 16 = 96) fit in 100, the second block's norm weight would not
    capped = plan_units(model, cap=2000, persistence_threshold=100, model_persistence_threshold=100)
    assert [p for p in capped.persistent] == [
        model.blocks[0].ln.weight,
        model.blocks[0].ln.bias,
        model.blocks[0].fc1.bias,
        model.blocks[0].fc2.bias,
    ]
    assert capped.numel[id(model.blocks[1])] == sum(p.numel() for p in model.blocks[1].parameters())


class Expert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(16, 64), nn.Linear(64, 16)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


class MoE(nn.Module):
    def __init__(self, experts: int = 4) -> None:
        super().__init__()
        self.router = nn.Linear(16, experts)
        self.experts = nn.ModuleList(Expert() for _ in range(experts))

    def forward(self, x):
        choice = self.router(x).argmax(-1)
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            picked = choice == i
            if picked.any():
                out[picked] = expert(x[picked])
        return out


def test_a_leaf_module_is_one_unit_whatever_its_size():
    from ds_zero.stage3.leaf import set_z3_leaf_modules

    model = nn.Sequential(nn.Linear(16, 16), MoE(), nn.Linear(16, 16))
    split = plan_units(model, cap=3000, persistence_threshold=0)
    assert "1.experts.0" in _names(split)  # each expert (2128 elements) is a unit of its own
    assert set_z3_leaf_modules(model, [MoE]) == [model[1]]
    plan = plan_units(model, cap=3000, persistence_threshold=0)
    assert _names(plan) == ["0", "1", "2", ""]  # the 8580-element MoE block is one unit, over the cap
    assert plan.numel[id(model[1])] == sum(p.numel() for p in model[1].parameters())


def test_a_leaf_that_cannot_be_a_unit_joins_its_parent():
    from ds_zero.stage3.leaf import set_z3_leaf_module

    model = TinyGPT()
    set_z3_leaf_module(model.blocks, True)  # a ModuleList is never called: it cannot be a unit
    plan = plan_units(model, cap=2000, persistence_threshold=0)
    assert _names(plan) == ["wte", "head", ""]
    assert plan.numel[id(model)] == sum(p.numel() for p in model.blocks.parameters())


def test_granularity_threshold_flags_the_outermost_fine_grained_modules():
    from ds_zero.stage3.leaf import get_z3_leaf_modules, granularity, mark_fine_grained

    model = nn.Sequential(nn.Linear(16, 256), MoE(experts=8))
    values = granularity(model)
    # MoE: 8 experts x (2 linears + the expert) + the router + the block itself = 26 layers; the
    # ModuleList between them is a container and does not count
    moe_numel = sum(p.numel() for p in model[1].parameters())
    assert values[id(model[1])] == moe_numel // 26
    assert values[id(model[1].experts[0])] == (16 * 64 + 64 + 64 * 16 + 16) // 3
    assert mark_fine_grained(model, 0) == []
    # at a threshold both the block and its experts meet, only the outermost (the block) is flagged
    assert mark_fine_grained(model, values[id(model[1].experts[0])]) == [model[1]]
    assert get_z3_leaf_modules(model) == [model[1]]


class Wrapped(nn.Module):
    """A head nested one level down, as some models hold it (``model.decoder.head``)."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = TinyGPT()

    def forward(self, idx):
        return self.decoder(idx)

    def get_output_embeddings(self) -> nn.Module:
        return self.decoder.head


def test_output_embeddings_stay_in_the_root_unit() -> None:
    """Note [head in the root unit]: the head is no unit, and no unit encloses it."""
    from ds_zero.stage3.gathered_status import output_embeddings

    model = TinyGPT()
    plain = plan_units(model, cap=2000, persistence_threshold=0)
    assert model.head in plain.units
    kept = plan_units(model, cap=2000, persistence_threshold=0, keep_in_root=[model.head])
    assert model.head not in kept.units and kept.units[-1] is model
    assert kept.numel[id(model)] == plain.numel[id(model)] + sum(p.numel() for p in model.head.parameters())

    wrapped = Wrapped()
    assert output_embeddings(wrapped) == [wrapped.decoder.head] and output_embeddings(model) == []
    plan = plan_units(wrapped, cap=2000, persistence_threshold=0, keep_in_root=output_embeddings(wrapped))
    assert wrapped.decoder not in plan.units and wrapped.decoder.head not in plan.units
    assert all(block in plan.units for block in wrapped.decoder.blocks)  # the rest still splits
