"""A data-parallel user script, timed per phase: the workload of ``benchmarks/dp_step_phases.py``.

It is an ordinary DeepSpeed training script (``deepspeed.initialize``, ``engine(x)``,
``engine.backward(loss)``, ``engine.step()``) so that the same file runs unchanged under this project
and under the reference DeepSpeed. For each ZeRO stage named on the command line it builds a fresh
engine on the same initial weights, runs ``--warmup`` untimed and ``--steps`` timed steps, and records
the wall time of each phase as the script sees it:

- ``forward``: ``loss = engine(batch)`` (the model and the loss);
- ``backward``: ``engine.backward(loss)`` (gradients, and whatever reduction runs inside backward);
- ``step``: ``engine.step()`` (reduction left for the boundary, clipping, the optimizer, the schedule,
  and for sharded stages the gather of updated weights);
- ``gap``: the rest of the iteration (fetching the batch, the loop itself).

Rank r writes ``<--out>.rank<r>`` (JSON). ``first_step_at`` is the wall clock at the end of the
first engine's first step, for the harness to subtract its launch time from.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import time

import torch
import torch.nn.functional as F
from torch import nn

import deepspeed

# name: (vocab, width, layers); about 1M, 5M, 25M and 100M parameters with tied embeddings.
SIZES = {"1M": (1024, 128, 4), "5M": (4096, 256, 5), "25M": (8192, 512, 7), "100M": (16384, 768, 12)}


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.heads = max(1, width // 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, seq: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(seq, width))
        self.blocks = nn.ModuleList(Block(width) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        nn.init.normal_(
            self.tok.weight, std=0.02
        )  # GPT-2's scale: a tied head of N(0, 1) rows starts at loss ~70

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx[:, :-1]) + self.pos[: idx.shape[1] - 1]
        for block in self.blocks:
            x = block(x)
        logits = self.ln(x) @ self.tok.weight.t()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))


def config(stage: int, micro_batch: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "steps_per_print": 1_000_000,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.01}},
        "scheduler": {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": 0, "warmup_max_lr": 1e-3, "warmup_num_steps": 10},
        },
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": stage},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=SIZES, default="5M")
    parser.add_argument("--stages", default="0,1,2,3")
    parser.add_argument("--global_batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int, default=0)  # the launcher passes it
    args = parser.parse_args()

    deepspeed.init_distributed()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    vocab, width, layers = SIZES[args.size]
    torch.manual_seed(0)
    initial = GPT(vocab, width, layers, args.seq).state_dict()
    micro = args.global_batch // world
    data = torch.Generator().manual_seed(1234 + rank)
    batches = [torch.randint(0, vocab, (micro, args.seq + 1), generator=data) for _ in range(8)]

    report: dict = {"rank": rank, "world": world, "size": args.size, "stages": {}}
    for stage in (int(s) for s in args.stages.split(",")):
        model = GPT(vocab, width, layers, args.seq)
        model.load_state_dict(initial)
        report["params"] = sum(p.numel() for p in model.parameters())
        engine, *_ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), config=config(stage, micro)
        )
        phases: dict[str, list[float]] = {"forward": [], "backward": [], "step": [], "gap": [], "total": []}
        loss = torch.tensor(math.nan)
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            batch = batches[i % len(batches)]
            t1 = time.perf_counter()
            loss = engine(batch)
            t2 = time.perf_counter()
            engine.backward(loss)
            t3 = time.perf_counter()
            engine.step()
            t4 = time.perf_counter()
            if "first_step_at" not in report:
                report["first_step_at"] = time.time()
            if i >= args.warmup:
                for name, value in (
                    ("gap", t1 - t0),
                    ("forward", t2 - t1),
                    ("backward", t3 - t2),
                    ("step", t4 - t3),
                    ("total", t4 - t0),
                ):
                    phases[name].append(value)
        report["stages"][stage] = {"phases": phases, "final_loss": loss.item()}
        del engine, model
        gc.collect()
    report["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(f"{args.out}.rank{rank}", "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
