"""Train a small GPT with DeepSpeed on synthetic text, as an ordinary DeepSpeed user script.

    deepspeed --num_gpus 2 examples/gpt/train.py --deepspeed --deepspeed_config examples/gpt/ds_config.json

Nothing here is specific to this project: the same file runs under the reference DeepSpeed. The text is
generated in the script (a fixed random Markov chain over the vocabulary, so there is structure to learn
and the loss falls); nothing is downloaded. ``--metrics_json`` makes each rank write its timings, peak
memory and losses to ``<path>.rank<N>`` (the benchmark reads them).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import deepspeed


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="small GPT on synthetic text")
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the launcher")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--n_layer", type=int, default=4)
    parser.add_argument("--n_head", type=int, default=4)
    parser.add_argument("--n_embd", type=int, default=256)
    parser.add_argument("--samples", type=int, default=8192, help="synthetic sequences in the dataset")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--log_interval", type=int, default=10)
    parser.add_argument("--save_dir", type=str, default=None, help="save a checkpoint here at the end")
    parser.add_argument(
        "--resume", action="store_true", help="load the latest checkpoint from --save_dir first"
    )
    parser.add_argument("--metrics_json", type=str, default=None)
    parser = deepspeed.add_config_arguments(parser)
    return parser.parse_args()


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, seq_len: int, n_layer: int, n_head: int, n_embd: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, n_embd)
        self.pos = nn.Embedding(seq_len, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.tok(tokens) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


class MarkovText(Dataset):
    """Sequences from a fixed random Markov chain in which each token has 4 likely successors."""

    def __init__(self, samples: int, seq_len: int, vocab: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        successors = torch.randint(0, vocab, (vocab, 4), generator=gen)
        tokens = torch.empty(samples, seq_len + 1, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, vocab, (samples,), generator=gen)
        for t in range(seq_len):
            choice = torch.randint(0, 4, (samples,), generator=gen)
            tokens[:, t + 1] = successors[tokens[:, t], choice]
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.tokens[index]


def global_mean(value: torch.Tensor) -> float:
    value = value.detach().float().clone()
    deepspeed.comm.all_reduce(value)
    return value.item() / deepspeed.comm.get_world_size()


def main() -> None:
    args = parse_args()
    deepspeed.init_distributed()
    rank, world = deepspeed.comm.get_rank(), deepspeed.comm.get_world_size()
    torch.manual_seed(args.seed)
    model = GPT(args.vocab, args.seq_len, args.n_layer, args.n_head, args.n_embd)
    engine, _, _, _ = deepspeed.initialize(args=args, model=model, model_parameters=model.parameters())
    if args.resume and args.save_dir:
        engine.load_checkpoint(args.save_dir)
    data = MarkovText(args.samples, args.seq_len, args.vocab, args.seed)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(
        data, batch_size=engine.train_micro_batch_size_per_gpu(), sampler=sampler, drop_last=True
    )
    if rank == 0:
        params = sum(p.numel() for p in model.parameters())
        print(
            f"GPT: {params / 1e6:.2f}M parameters, {world} ranks, batch {engine.train_batch_size()}",
            flush=True,
        )

    step_times, losses, first_step_at, epoch = [], [], None, 0
    last = time.perf_counter()
    while engine.global_steps < args.steps:
        sampler.set_epoch(epoch)
        for tokens in loader:
            tokens = tokens.to(engine.device)
            logits = engine(tokens[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, args.vocab), tokens[:, 1:].reshape(-1))
            engine.backward(loss)
            before = engine.global_steps
            engine.step()
            if engine.global_steps == before:
                continue  # inside gradient accumulation
            now = time.perf_counter()
            step_times.append(now - last)
            last = now
            if first_step_at is None:
                first_step_at = time.time()
            if engine.global_steps % args.log_interval == 0 or engine.global_steps == args.steps:
                mean = global_mean(loss)
                losses.append((engine.global_steps, mean))
                if rank == 0:
                    print(
                        f"step {engine.global_steps:4d}  loss {mean:.4f}  lr {engine.get_lr()[0]:.2e}",
                        flush=True,
                    )
            if engine.global_steps >= args.steps:
                break
        epoch += 1

    if args.save_dir:
        engine.save_checkpoint(args.save_dir, client_state={"epoch": epoch})
    final = losses[-1][1] if losses else math.nan
    if rank == 0:
        print(f"final loss {final:.4f} (uniform would be {math.log(args.vocab):.4f})", flush=True)
    if args.metrics_json:
        metrics = {
            "rank": rank,
            "first_step_at": first_step_at,
            "step_times": step_times,
            "losses": losses,
            "final_loss": final,
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        }
        with open(f"{args.metrics_json}.rank{rank}", "w") as handle:
            json.dump(metrics, handle)
    deepspeed.comm.destroy_process_group()


if __name__ == "__main__":
    main()
