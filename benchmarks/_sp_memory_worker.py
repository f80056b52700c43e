"""One side of benchmarks/sequence_parallel_memory.py: a DeepSpeed user's long-sequence step on this rank.

It imports only torch, transformers, ``deepspeed`` (by DeepSpeed's public paths) and the shared counter
benchmarks/_live_bytes.py, so the same file runs unchanged under this project's venv and under the
reference DeepSpeed's venv: which ``deepspeed`` it measures is the interpreter's. Run it directly for one
rank (no sequence parallelism) or under ``python -m torch.distributed.run --nproc-per-node 2`` for
Ulysses SP. It doubles the sequence length from 512, one forward + backward per length on a fresh model,
until the peak live bytes (the largest over the ranks) pass the budget, and rank 0 prints one line
``SPMEM {"peaks": {seq: bytes, ...}, "losses": {seq: loss, ...}}`` (the loss shows both sides ran the same
step).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _live_bytes import PeakLiveBytes  # noqa: E402 - found through the line above in either venv

VOCAB, HIDDEN, INNER, HEADS, KV, LAYERS = 2048, 64, 256, 4, 2, 2
IGNORE = -100
MARK = "SPMEM "


def _patch_tiled_mlp() -> None:
    """Every LlamaMLP runs through ``TiledMLP`` in tiles of about ``HIDDEN`` tokens (ALST's recipe)."""
    from transformers.models.llama import modeling_llama

    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP

    def mlp(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module.down_proj(module.act_fn(module.gate_proj(x)) * module.up_proj(x))

    def tiled_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        shards = max(1, math.ceil(x.shape[-2] / HIDDEN))  # equal on every rank: the shards are equal
        weights = [self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight]
        return TiledMLP.apply(mlp, self, x, shards, weights)

    modeling_llama.LlamaMLP.forward = tiled_forward


def _model() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

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


def _batch(seq: int, sp: int, group: Any) -> dict[str, torch.Tensor]:
    """This rank's shard of one sample (``UlyssesSPDataLoaderAdapter`` under SP, the same shift without)."""
    ids = torch.randint(0, VOCAB, (1, seq), generator=torch.Generator().manual_seed(0))
    sample = {"input_ids": ids, "labels": ids.clone(), "position_ids": torch.arange(seq)[None]}
    if sp == 1:
        labels = torch.nn.functional.pad(sample.pop("labels"), (0, 1), value=IGNORE)
        return {**sample, "shift_labels": labels[:, 1:].contiguous()}
    import deepspeed.comm as dist
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPDataLoaderAdapter

    loader = UlyssesSPDataLoaderAdapter([sample], dist.get_rank(group), group, sp, torch.device("cpu"))
    return next(iter(loader))  # every rank drew the same sample; the first is rank 0's


def _local_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], tiled: bool) -> torch.Tensor:
    """Mean cross entropy over this rank's labelled tokens (logits in tiles when ``tiled``)."""
    labels = batch["shift_labels"]
    if not tiled:
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=IGNORE
        )
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledFusedLogitsLoss

    hidden = model.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).last_hidden_state

    def loss_fn(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(
            head(x).reshape(-1, VOCAB), y.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )

    shards = max(1, math.ceil(hidden.shape[1] / 256))
    total = TiledFusedLogitsLoss.apply(
        loss_fn, model.lm_head, hidden, labels, None, shards, [model.lm_head.weight], "sum"
    )
    return total / (labels != IGNORE).sum().clamp(min=1)


def _sp_loss(loss: torch.Tensor, labels: torch.Tensor, group: Any, sp: int) -> torch.Tensor:
    """The whole sequence's mean loss: each rank's mean weighted by its labelled tokens (ALST's recipe)."""
    import torch.distributed.nn.functional as dnn

    losses = dnn.all_gather(loss.reshape(1), group=group)  # differentiable: backward reaches every rank
    tokens = (labels != IGNORE).sum().reshape(1)
    counts = [torch.zeros_like(tokens) for _ in range(sp)]
    torch.distributed.all_gather(counts, tokens, group=group)
    total = sum(one * n for one, n in zip(losses, counts))
    return total.sum() / max(int(sum(counts).item()), 1)


def step_peak(seq: int, sp: int, tiled: bool, group: Any) -> tuple[int, float]:
    """Peak live bytes of one forward + backward of a fresh model on this rank, and the step's loss."""
    model = _model()
    batch = _batch(seq, sp, group)
    with PeakLiveBytes() as counter:
        loss = _local_loss(model, batch, tiled)
        if sp > 1:
            loss = _sp_loss(loss, batch["shift_labels"], group, sp)
        loss.backward()
    return counter.peak, float(loss.detach())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, required=True, help="bytes per rank")
    parser.add_argument("--max-seq", type=int, default=32768)
    parser.add_argument("--tiled", action="store_true")
    args = parser.parse_args()
    sp = int(os.environ.get("WORLD_SIZE", "1"))
    if args.tiled:
        _patch_tiled_mlp()  # before any model is built, as the reference documents
    group = None
    if sp > 1:
        import deepspeed.comm as dist
        from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

        dist.init_distributed(dist_backend="gloo")
        # Registered once: the sequence length varies between steps (the doubling), so it is not fixed.
        mpu = UlyssesSPAttentionHF.register_with_transformers(_model(), "sdpa", sp, 1)
        group = mpu.get_sequence_parallel_group()
    peaks: dict[int, int] = {}
    losses: dict[int, float] = {}
    seq = 512
    while seq <= args.max_seq:
        bytes_here, losses[seq] = step_peak(seq, sp, args.tiled, group)
        peak = torch.tensor([bytes_here], dtype=torch.int64)
        if group is not None:
            torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
        peaks[seq] = int(peak.item())
        if peaks[seq] > args.budget:
            break
        seq *= 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(MARK + json.dumps({"peaks": peaks, "losses": losses}), flush=True)
    if group is not None:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
