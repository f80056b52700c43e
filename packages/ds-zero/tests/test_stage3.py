"""ZeRO stage 3 on real gloo ranks equals single-process PyTorch on the same global batch.

10 steps, gradient accumulation 2, clipping at 0.5, fp32 to 1e-5: a plain MLP, the same with CPU
offload, a model whose sibling layers share a weight, and one with a frozen layer. The policy splits
the tiny models into several shard units and keeps biases whole, so units (FSDP2), persistent
parameters, prefetch and the agreement checks all run.
"""

from __future__ import annotations

import pytest
import torch
from _stage3_models import reference, train_stage3

from ds_comm.testing import DistributedTestError, run_distributed

STEPS, GAS, MICRO, CLIP = 10, 2, 2, 0.5
CASES = [("mlp", False), ("mlp", True), ("tied", False), ("frozen", True)]


def _train_cases():
    from ds_zero.stage3 import full_state_dict

    out = {}
    for name, offload in CASES:
        trainer, model = train_stage3(name, steps=STEPS, gas=GAS, micro=MICRO, clip=CLIP, offload=offload)
        units = [trainer.sharded.plan.names[id(u)] for u in trainer.sharded.units]
        out[(name, offload)] = (
            full_state_dict(model, rank0_only=False),
            units,
            len(trainer.sharded.plan.persistent),
        )
        trainer.close()
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world", [2, 4])
def test_matches_single_process(world):
    results = run_distributed(_train_cases, world_size=world, timeout=280)
    for name, offload in CASES:
        expected = reference(name, steps=STEPS, gas=GAS, micro=MICRO, world=world, clip=CLIP)
        for rank_result in results:
            state, units, persistent = rank_result[(name, offload)]
            assert len(units) >= 3 and persistent >= 3, (
                units,
                persistent,
            )  # several units, some whole params
            assert state.keys() == expected.keys()
            for key, want in expected.items():
                torch.testing.assert_close(
                    state[key], want, rtol=1e-5, atol=1e-5, msg=f"{name} offload={offload} {key}"
                )
    tied_units = results[0][("tied", False)][1]
    assert "b" not in tied_units and "c" not in tied_units  # the shared weight lives in their common parent


def _train_bf16():
    trainer, model = train_stage3("mlp", steps=4, gas=1, micro=2, clip=0.0, dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in trainer.optimizer.param_groups[0]["params"])  # fp32 masters
    assert model[0].bias.dtype == torch.bfloat16  # whole (persistent) parameters compute in bf16
    return trainer.state_dict()


@pytest.mark.timeout(120)
def test_bf16_tracks_fp32_masters():
    from _models import reference_mixed_precision, tiny_mlp

    from ds_zero.sharded_state import consolidate_fp32

    masters = consolidate_fp32(run_distributed(_train_bf16, world_size=2))
    expected = reference_mixed_precision(4, 2, 2, torch.bfloat16)
    for (name, _), want in zip(tiny_mlp().named_parameters(), expected):
        # bf16 compute on different batch splits rounds differently; the fp32 masters stay close
        torch.testing.assert_close(masters[name], want, rtol=0, atol=2e-2)


class _Looping(torch.nn.Module):
    """Runs its middle layer ``repeats`` times, as generation runs a decoder until it is done."""

    def __init__(self, repeats: int) -> None:
        super().__init__()
        self.repeats = repeats
        self.inp, self.mid, self.out = torch.nn.Linear(8, 64), torch.nn.Linear(64, 64), torch.nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for _ in range(self.repeats):
            h = self.mid(h)
        return self.out(h)


def _divergent():
    from _stage3_models import stage3_policy

    import ds_comm
    from ds_zero import wrap

    torch.manual_seed(0)
    model = _Looping(repeats=2 if ds_comm.get_rank() == 0 else 1)  # rank 0 takes one more turn
    trainer = wrap(
        model, torch.optim.SGD(model.parameters(), lr=0.1), policy=stage3_policy(cap=4200, persist=0)
    )
    trainer.backward(model(torch.randn(2, 8)).sum())
    trainer.step()


@pytest.mark.timeout(120)
def test_divergent_path_fails_naming_the_module():
    with pytest.raises(DistributedTestError) as failure:
        run_distributed(_divergent, world_size=2, timeout=90)
    message = str(failure.value)
    assert "DivergentPathError" in message
    assert "module 'mid' (forward call 2" in message  # what rank 0 was about to gather a second time
    assert "module 'out' (forward call 1" in message  # where rank 1 was
    assert "did not finish" not in message  # an error, not a timeout
