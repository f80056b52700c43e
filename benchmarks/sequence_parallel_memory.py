"""The longest sequence one training step fits in a fixed per-rank memory budget, on CPU ranks (gloo):
without sequence parallelism, with Ulysses SP 2, and with SP 2 plus ALST's tiling (TiledMLP on every
MLP, TiledFusedLogitsLoss for the LM head and loss).

Memory is counted neutrally with ``ds_parallel.memory.LiveTensorBytes``: the peak bytes of tensors
created during forward + backward on a rank (parameters and their gradients included; no optimizer),
so the figure does not depend on an allocator. A small Llama (transformers, built from a config) is
doubled in sequence length until a step no longer fits the budget.

    python benchmarks/sequence_parallel_memory.py [--budget-mib 48] [--max-seq 32768]

The reference DeepSpeed's Ulysses needs its own venv (benchmarks/_reference.py) and a GPU-oriented
stack; it is not run here (its ``UlyssesSPAttentionHF`` is the same all-to-all, so its activation
memory per rank is the same by construction; only our implementation is measured).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

VOCAB, HIDDEN, INNER, HEADS, KV, LAYERS = 2048, 64, 256, 4, 2, 2


def _model(tiled: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama import modeling_llama

    from ds_parallel.ulysses import TiledMLP

    if tiled:

        def tiled_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
            shards = max(1, math.ceil(x.shape[-2] / HIDDEN))

            def mlp(module: torch.nn.Module, t: torch.Tensor) -> torch.Tensor:
                return module.down_proj(module.act_fn(module.gate_proj(t)) * module.up_proj(t))

            return TiledMLP.apply(mlp, self, x, shards, None)

        modeling_llama.LlamaMLP.forward = tiled_forward
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INNER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV,
        max_position_embeddings=1 << 16,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg)


def _loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], tiled: bool) -> torch.Tensor:
    from ds_parallel.ulysses import TiledFusedLogitsLoss

    if not tiled:
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, VOCAB), batch["shift_labels"].reshape(-1), ignore_index=-100
        )
    hidden = model.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).last_hidden_state
    valid = (batch["shift_labels"] != -100).sum().clamp(min=1)

    def loss_fn(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(
            head(x).reshape(-1, VOCAB), y.reshape(-1), ignore_index=-100, reduction="sum"
        )

    shards = max(1, math.ceil(hidden.shape[1] / 256))
    return (
        TiledFusedLogitsLoss.apply(
            loss_fn, model.lm_head, hidden, batch["shift_labels"], None, shards, None, "sum"
        )
        / valid
    )


def step_peak(seq: int, sp: int, tiled: bool) -> int:
    """Peak live bytes of one forward + backward on this rank (a rank function)."""
    from ds_parallel.memory import LiveTensorBytes
    from ds_parallel.ulysses import UlyssesSPAttentionHF, sequence_parallel_loss, shift_and_shard

    model = _model(tiled)
    rank, group = 0, None
    if sp > 1:
        mpu = UlyssesSPAttentionHF.register_with_transformers(
            model, "sdpa", sp, 1, seq_length=seq, seq_length_is_variable=False
        )
        rank, group = mpu.get_sequence_parallel_rank(), mpu.get_sequence_parallel_group()
    ids = torch.randint(0, VOCAB, (1, seq), generator=torch.Generator().manual_seed(0))
    batch = shift_and_shard(
        {"input_ids": ids, "labels": ids, "position_ids": torch.arange(seq)[None]}, rank, sp
    )
    with LiveTensorBytes() as mode:
        loss = _loss(model, batch, tiled)
        if group is not None:
            loss = sequence_parallel_loss(loss, batch["shift_labels"], group)
        loss.backward()
    return mode.peak


def longest(sp: int, tiled: bool, budget: int, max_seq: int) -> tuple[int, dict[int, int]]:
    from ds_comm.testing import run_distributed

    peaks: dict[int, int] = {}
    best, seq = 0, 512
    while seq <= max_seq:
        peak = max(run_distributed(step_peak, world_size=sp, timeout=900, args=(seq, sp, tiled)))
        peaks[seq] = peak
        if peak > budget:
            break
        best, seq = seq, seq * 2
    return best, peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-mib", type=float, default=48.0)
    parser.add_argument("--max-seq", type=int, default=32768)
    args = parser.parse_args(argv)
    try:
        import transformers  # noqa: F401 - the model comes from it
    except ImportError:
        print("sequence_parallel_memory: transformers is not installed (the clients' dependency); skipped")
        return 0
    budget = int(args.budget_mib * 2**20)
    print(
        f"budget {args.budget_mib:g} MiB per rank; Llama hidden {HIDDEN}, inner {INNER}, vocab {VOCAB}, "
        f"{LAYERS} layers, {HEADS} heads / {KV} KV heads; peak live bytes of forward+backward"
    )
    rows = [
        ("no SP (1 rank)", 1, False),
        ("Ulysses SP 2 (2 ranks)", 2, False),
        ("SP 2 + TiledMLP + TiledFusedLogitsLoss", 2, True),
    ]
    base = None
    for name, sp, tiled in rows:
        best, peaks = longest(sp, tiled, budget, args.max_seq)
        base = base or best
        detail = ", ".join(f"{s}: {p / 2**20:.1f}" for s, p in peaks.items())
        print(f"{name:42s} longest seq {best:6d}  ({best / base:.1f}x)   peak MiB by seq: {detail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
