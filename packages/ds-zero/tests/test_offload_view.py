"""``parameter_offload`` (Note [hooks off for generation]): hooks taken out and put back exactly; FSDP2's names.

The end-to-end check (TRL's sequence, generation on 2 ranks, training afterwards) is in
``tests/engine/test_engine_zero3_generation.py``; here: the hook bookkeeping on a plain module, and on
real shard units that the FSDP2 internals ``fsdp_forward_handles`` reads still mean what it assumes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ds_comm.testing import run_distributed


def _tables(module: nn.Module) -> list:
    return [
        list(module._forward_pre_hooks.items()),
        list(module._forward_pre_hooks_with_kwargs),
        list(module._forward_hooks.items()),
        list(module._forward_hooks_with_kwargs),
    ]


def test_suspended_hooks_go_back_in_their_places():
    from ds_zero.stage3.offload_view import SuspendableHook

    module, calls = nn.Linear(2, 2), []
    handles = [
        module.register_forward_pre_hook(lambda m, a: calls.append("a")),
        module.register_forward_pre_hook(lambda m, a, k: calls.append("b"), prepend=True, with_kwargs=True),
        module.register_forward_pre_hook(lambda m, a: calls.append("c")),
        module.register_forward_hook(lambda m, a, o: calls.append("d"), always_call=True),
    ]
    before = _tables(module)
    hooks = [SuspendableHook(h) for h in handles]
    hooks[2].remove()
    hooks[1].remove()
    hooks[3].remove()
    hooks[3].remove()  # twice: no-op
    module(torch.ones(2))
    assert calls == ["a"]
    late = module.register_forward_pre_hook(lambda m, a: calls.append("late"))
    for hook in sorted(hooks, key=lambda h: h.stamp, reverse=True):
        hook.put_back()
    late.remove()
    assert _tables(module) == before
    assert not any(h.removed for h in hooks)
    calls.clear()
    module(torch.ones(2))
    assert calls == ["b", "a", "c", "d"]


def test_deepspeed_module_attributes_survive_pickle_and_deepcopy():
    import copy
    import pickle

    from ds_zero.stage3.external import register_external_parameter
    from ds_zero.stage3.offload_view import add_deepspeed_module_attributes

    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    register_external_parameter(model[1], model[0].weight)
    add_deepspeed_module_attributes(model)
    assert model[1].ds_external_parameters() == [(id(model[0].weight), model[0].weight)]
    assert model[0].ds_external_parameters() == [] and model[0].weight.ds_active_sub_modules == set()
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert twin[0].ds_external_parameters() == [] and twin[0].ds_external_parameters.module is twin[0]


def _offload_on_units():
    from _stage3_models import stage3_policy
    from torch.distributed.fsdp import fully_shard

    from ds_zero import wrap
    from ds_zero.stage3.offload_view import fsdp_forward_handles

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 4))
    trainer = wrap(
        model, torch.optim.SGD(model.parameters(), lr=0.1), policy=stage3_policy(cap=200, persist=0)
    )
    offload = trainer.parameter_offload
    found = []
    for unit in trainer.sharded.units:
        state = fully_shard.state(unit)
        pre, post = fsdp_forward_handles(unit)
        # the handles hold FSDP2's own forward hooks, in the tables of this unit
        found.append(
            unit._forward_pre_hooks[pre.id] == state._pre_forward
            and unit._forward_hooks[post.id] == state._post_forward
        )
    externals = all(
        callable(m.ds_external_parameters) and list(m.ds_external_parameters()) == [] for m in model.modules()
    )
    active = all(p.ds_active_sub_modules == set() for p in model.parameters())
    before = [_tables(m) for m in model.modules()]
    for hook in offload.forward_hooks:
        hook.remove()
    bare = all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    offload.forward_hooks = []
    with pytest.raises(ValueError, match="parameter_offload.module"):
        offload._register_deepspeed_module(model[0])
    offload._register_deepspeed_module(model)
    restored = [_tables(m) for m in model.modules()] == before
    return (
        len(trainer.sharded.units),
        found,
        externals,
        active,
        bare,
        restored,
        len(offload.forward_hooks),
        len(trainer.sharded.status_hooks),
    )


@pytest.mark.timeout(120)
def test_fsdp_forward_hooks_are_found_taken_out_and_restored():
    for units, found, externals, active, bare, restored, listed, tagged in run_distributed(
        _offload_on_units, world_size=2, timeout=90
    ):
        assert units > 1 and all(found), (
            "FSDP2 keeps its forward hooks elsewhere: update fsdp_forward_handles"
        )
        assert externals and active
        assert bare, "a unit hook stayed in the forward path"
        assert restored
        # FSDP2 pre+post, ours per unit, the ds_status tag per unit that owns parameters (the root here owns
        # none), our end-of-root, the dtype views
        assert tagged == units - 1 and listed == 2 * units + units + tagged + 1 + 1
