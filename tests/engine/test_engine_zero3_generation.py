"""TRL's online generation at ZeRO-3 (Note [hooks off for generation] in ds_zero.stage3.offload_view).

TRL's ``unwrap_model_for_generation`` gathers every parameter, takes the ZeRO-3 hooks off through
``engine.optimizer.parameter_offload``, generates, and puts the hooks back. On 2 gloo ranks with
different prompts and different numbers of new tokens (so a collective per token would hang or be
refused), after 2 training steps: the tokens must equal a plain single-process copy of the trained
weights, no c10d collective may run while generating, the hook tables must be restored exactly, and
training afterwards must give the losses of a run that never generated. TRL's own ``remove_hooks`` /
``add_hooks`` run when trl is installed; otherwise the same attribute names are called here.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ds_comm.testing import run_distributed

VOCAB, WIDTH, PROMPT = 23, 16, 4
NEW_TOKENS = (5, 9)  # per rank: generation runs a different number of forwards on each


class TinyLM(torch.nn.Module):
    """Embedding, causal running-mean mixing, two MLP blocks with LayerNorm, LM head: logits per position."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, WIDTH)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(
                torch.nn.Linear(WIDTH, 2 * WIDTH),
                torch.nn.GELU(),
                torch.nn.Linear(2 * WIDTH, WIDTH),
                torch.nn.LayerNorm(WIDTH),
            )
            for _ in range(2)
        )
        self.head = torch.nn.Linear(WIDTH, VOCAB)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        steps = torch.arange(1, h.shape[1] + 1, dtype=h.dtype).view(1, -1, 1)
        h = torch.cumsum(h, dim=1) / steps  # causal: position t sees tokens <= t
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


@torch.no_grad()
def generate(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding, one full forward per new token."""
    for _ in range(max_new_tokens):
        nxt = model(input_ids)[:, -1].argmax(dim=-1, keepdim=True)
        input_ids = torch.cat([input_ids, nxt], dim=1)
    return input_ids


class _Collectives(TorchDispatchMode):
    """Counts the c10d ops issued (FSDP2's, ours, anyone's) while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "c10d":
            self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _config(precision: str) -> dict:
    # persistence threshold 40: biases and LayerNorm stay whole, the matrices are sharded
    return {
        "train_batch_size": 8,
        "train_micro_batch_size_per_gpu": 4,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": precision == "bf16"},
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 40,
            "stage3_prefetch_bucket_size": 2000,
        },
    }


def _batch(step: int, rank: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, 6), generator=torch.Generator().manual_seed(100 * step + rank))


def _train(engine, steps: range, rank: int) -> list[float]:
    losses = []
    for step in steps:
        ids = _batch(step, rank)
        logits = engine(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def _hook_tables(module: torch.nn.Module) -> list:
    return [
        (
            list(m._forward_pre_hooks.items()),
            list(m._forward_pre_hooks_with_kwargs),
            list(m._forward_hooks.items()),
            list(m._forward_hooks_with_kwargs),
        )
        for m in module.modules()
    ]


def _trl_hooks():
    """TRL's remove_hooks/add_hooks, or the same calls on the same names when trl is not installed."""
    try:
        from trl.models.utils import add_hooks, remove_hooks
    except ImportError:

        def remove_hooks(engine):
            offload = engine.optimizer.parameter_offload
            params = [p for _, p in offload.module.named_parameters(recurse=True)]
            params += [p for _, p in offload.module.ds_external_parameters()]
            for p in params:
                p.ds_active_sub_modules.clear()
            for hook in offload.forward_hooks + offload.backward_hooks:
                hook.remove()
            offload.forward_hooks, offload.backward_hooks = [], []

        def add_hooks(engine):
            offload = engine.optimizer.parameter_offload
            offload._register_deepspeed_module(offload.module)

    return remove_hooks, add_hooks


def _generation_rank(precision: str, generate_between: bool):
    import deepspeed
    import ds_comm

    rank = ds_comm.get_rank()
    torch.manual_seed(0)
    engine, *_ = deepspeed.initialize(model=TinyLM(), config=_config(precision))
    losses = _train(engine, range(2), rank)
    out = {"losses_before": losses}
    if generate_between:
        trained = engine.optimizer.full_state_dict(rank0_only=False)
        prompt = torch.randint(0, VOCAB, (1 + rank, PROMPT), generator=torch.Generator().manual_seed(rank))
        remove_hooks, add_hooks = _trl_hooks()
        tables = _hook_tables(engine.module)
        with deepspeed.zero.GatheredParameters(engine.parameters()):
            remove_hooks(engine)
            with _Collectives() as seen:
                tokens = generate(engine.module, prompt, NEW_TOKENS[rank])
            add_hooks(engine)
        out["restored"] = _hook_tables(engine.module) == tables
        out["collectives"] = seen.ops
        plain = TinyLM()
        plain.load_state_dict(trained)  # bf16: generation runs in the training dtype, as with DeepSpeed
        plain.to(torch.bfloat16 if precision == "bf16" else torch.float32)
        out["same_tokens"] = torch.equal(tokens, generate(plain, prompt, NEW_TOKENS[rank]))
        out["new_tokens"] = tokens.shape[1] - PROMPT
    out["losses_after"] = _train(engine, range(2, 4), rank)
    return out


@pytest.mark.timeout(240)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_trl_generation_at_zero3_matches_plain_model_and_training_continues(precision):
    generated = run_distributed(_generation_rank, world_size=2, timeout=100, args=(precision, True))
    never = run_distributed(_generation_rank, world_size=2, timeout=100, args=(precision, False))
    for rank, (got, want) in enumerate(zip(generated, never)):
        assert got["new_tokens"] == NEW_TOKENS[rank]
        assert got["same_tokens"], f"rank {rank}: generated tokens differ from the plain model's"
        assert got["collectives"] == [], f"rank {rank}: collectives while generating: {got['collectives']}"
        assert got["restored"], f"rank {rank}: hook tables differ after add_hooks"
        assert got["losses_before"] == want["losses_before"]
        assert got["losses_after"] == want["losses_after"]  # bitwise: generation left training untouched
