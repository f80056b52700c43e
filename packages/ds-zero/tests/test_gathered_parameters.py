"""``GatheredParameters``: full values for reading, and with ``modifier_rank`` that rank's changes are
broadcast back into every rank's shards on exit; plus the consolidated 16-bit state dict.

Both layouts: parameters partitioned by ``zero.Init`` (not yet wrapped: ``param.data`` itself becomes
full) and parameters in stage-3 units (the module attributes hold full views), including the whole
(persistent) parameters, whose fp32 masters must follow the change.
"""

from __future__ import annotations

import pytest
import torch
from _stage3_models import stage3_policy
from torch import nn

import ds_comm
from ds_comm.testing import run_distributed


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 3))


def _under_init():
    from ds_zero.stage3 import GatheredParameters, Init

    rank = ds_comm.get_rank()
    with Init(dtype=torch.float32):
        model = _model()
    weight = model[0].weight
    with GatheredParameters(weight):  # no modifier: local changes are dropped
        seen_shape = tuple(weight.shape)
        weight.data.fill_(-1.0)
    with GatheredParameters(weight, modifier_rank=0):
        weight.data.fill_(float(rank + 1))  # rank 0 writes 1.0; only its value may survive
    state = {k: v + 1 for k, v in _model().state_dict().items()}
    with GatheredParameters(list(model.parameters()), modifier_rank=0):
        if rank == 0:  # what Hugging Face does to load weights into a model built under Init
            model.load_state_dict(state)
    with GatheredParameters(list(model.parameters())):
        loaded = {k: v.clone() for k, v in model.state_dict().items()}
    return seen_shape, weight.numel(), loaded, state


@pytest.mark.timeout(120)
def test_init_partitions_gather_and_take_the_modifier_rank_values():
    for shape, numel_outside, loaded, state in run_distributed(_under_init, world_size=2):
        assert shape == (24, 12) and numel_outside == 0
        for key, want in state.items():
            assert torch.equal(loaded[key], want), key


def _wrapped():
    from ds_zero import wrap
    from ds_zero.stage3 import GatheredParameters, consolidated_16bit_state_dict, full_state_dict

    rank = ds_comm.get_rank()
    model = _model()
    plain = _model()
    policy = stage3_policy(cap=300, persist=30, reuse=10**9)  # units stay gathered from forward to backward
    trainer = wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), policy=policy)
    x = torch.randn(4, 12)
    model(x)  # leaves the units gathered: the write below must still reach the next forward
    assert trainer.masters.persistent is not None  # the biases stay whole
    with GatheredParameters([model[0].weight, model[2].bias], modifier_rank=0):
        full_read = model[0].weight.detach().clone()
        with torch.no_grad():
            model[0].weight.mul_(rank + 2)  # rank 0 doubles; rank 1's tripling must be discarded
            model[2].bias.add_(rank + 1)
    with torch.no_grad():
        plain[0].weight.mul_(2)
        plain[2].bias.add_(1)
    same_forward = torch.allclose(model(x), plain(x), atol=1e-6)
    # the bias's fp32 master followed the change: a zero-gradient SGD step keeps it
    trainer.backward(model(x).sum() * 0.0)
    trainer.step()
    bias_after_step = full_state_dict(model, rank0_only=False)["2.bias"]
    model(x)  # gathered again: a full state dict loaded now must still land in the shards
    model.load_state_dict(plain.state_dict())
    same_forward = same_forward and torch.allclose(model(x), plain(x), atol=1e-6)
    bf16 = _model()
    bf16_trainer = wrap(
        bf16,
        torch.optim.SGD(bf16.parameters(), lr=0.1),
        policy=stage3_policy(cap=300, persist=30, dtype=torch.bfloat16),
    )
    half = consolidated_16bit_state_dict(bf16_trainer)
    return full_read, same_forward, bias_after_step, plain[2].bias.detach(), half, rank


@pytest.mark.timeout(120)
def test_units_gather_modify_and_consolidate():
    plain = _model().state_dict()
    for full_read, same_forward, bias_after, bias_want, half, rank in run_distributed(_wrapped, world_size=2):
        assert torch.equal(full_read, plain["0.weight"])
        assert same_forward
        torch.testing.assert_close(bias_after, bias_want)
        if rank == 0:
            assert half.keys() == plain.keys()
            for key, want in plain.items():
                assert half[key].dtype == torch.bfloat16 and torch.equal(
                    half[key], want.to(torch.bfloat16)
                ), key
        else:
            assert half is None  # as DeepSpeed: only rank 0 gets the consolidated weights


def test_disabled_or_plain_parameters_are_left_alone():
    from ds_zero.stage3 import GatheredParameters

    layer = nn.Linear(2, 2)
    before = layer.weight.detach().clone()
    with GatheredParameters(layer.weight, modifier_rank=0, enabled=False):
        pass
    with GatheredParameters(layer.parameters(), modifier_rank=0):  # not partitioned: nothing to do
        pass
    assert torch.equal(layer.weight, before)
