"""``engine.compile(backend=..., compile_kwargs=...)`` and ``engine.is_compiled`` (DeepSpeed's, which Accelerate calls).

On 2 gloo ranks at ZeRO stages 0 and 3, with the ``eager`` and ``aot_eager`` backends (no C compiler
needed): the compiled engine's losses equal the uncompiled engine's, ``is_compiled`` flips, the module
stays the user's module (same ``state_dict`` keys), and at stage 3 our unit hooks (Note [divergence])
still run once per unit call, beside the compiled graph rather than traced into it (no graph break).
"""

from __future__ import annotations

import pytest
import torch

from ds_comm.testing import run_distributed


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 32),
        torch.nn.GELU(),
        torch.nn.LayerNorm(32),
        torch.nn.Linear(32, 32),
        torch.nn.GELU(),
        torch.nn.Linear(32, 3),
    )


def _config(stage: int) -> dict:
    return {
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
        "zero_optimization": {
            "stage": stage,
            "stage3_param_persistence_threshold": 40,  # several units
            "stage3_prefetch_bucket_size": 600,
            "reduce_bucket_size": 600,
        },
    }


def _train_rank(stage: int, backend: str | None):
    import deepspeed
    import ds_comm

    rank = ds_comm.get_rank()
    engine, *_ = deepspeed.initialize(model=_model(), config=_config(stage))
    flags = [engine.is_compiled]
    keys = list(engine.module.state_dict())
    if backend is not None:
        engine.compile(backend=backend, compile_kwargs={"dynamic": False})
        engine.compile(backend=backend)  # a second call does nothing
        flags.append(engine.is_compiled)
    losses, unit_calls = [], None
    for step in range(3):
        gen = torch.Generator().manual_seed(10 * step + rank)
        x, y = torch.randn(4, 8, generator=gen), torch.randint(0, 3, (4,), generator=gen)
        loss = torch.nn.functional.cross_entropy(engine(x), y)
        if stage == 3 and step == 0:  # our unit hooks ran, once per unit (Note [divergence])
            unit_calls = list(engine.optimizer.hooks.calls)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    breaks = 0
    if backend is not None:
        from torch._dynamo.utils import counters

        breaks = sum(counters["graph_break"].values())
    return {
        "losses": losses,
        "flags": flags,
        "graph_breaks": breaks,
        "same_keys": list(engine.module.state_dict()) == keys,
        "compiled_call": getattr(engine.module, "_compiled_call_impl", None) is not None,
        "unit_calls": unit_calls,
    }


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [0, 3])
def test_compiled_engine_matches_eager(stage):
    eager = run_distributed(_train_rank, world_size=2, timeout=120, args=(stage, None))
    for backend in ("eager", "aot_eager"):
        compiled = run_distributed(_train_rank, world_size=2, timeout=200, args=(stage, backend))
        for got, want in zip(compiled, eager):
            assert got["flags"] == [False, True]
            assert got["compiled_call"] and got["same_keys"]
            assert got["losses"] == pytest.approx(want["losses"], rel=1e-6, abs=1e-7), backend
            assert got["unit_calls"] == want["unit_calls"]
            assert got["graph_breaks"] == 0  # our unit hooks run beside the graph, not traced into it
            if stage == 3:
                assert len(got["unit_calls"]) > 1 and set(got["unit_calls"]) == {1}
        assert not eager[0]["compiled_call"] and eager[0]["flags"] == [False]
