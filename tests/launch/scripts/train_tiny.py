"""Rank script: a tiny deterministic DeepSpeed training run whose losses depend on every rank.

Each step's global batch comes from a generator seeded by the step, and each rank takes its rows by
its global rank, so two runs of the same world size see the same data wherever their ranks run.
Every rank writes its per-step losses to LOSS_DIR/loss.rank<R>.json. ``--save_at K`` saves tag
``stepK`` (client state: the step) into ``--save_dir`` after step K; ``--resume`` loads the latest
checkpoint from ``--save_dir`` and continues after its step.
"""

import argparse
import json
import os
from pathlib import Path

import torch

import deepspeed

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int, default=-1)
parser.add_argument("--steps", type=int, default=6)
parser.add_argument("--save_at", type=int, default=0)
parser.add_argument("--save_dir", default=None)
parser.add_argument("--resume", action="store_true")
deepspeed.add_config_arguments(parser)
args = parser.parse_args()

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
engine, *_ = deepspeed.initialize(args=args, model=model, model_parameters=model.parameters())
rank, world = deepspeed.comm.get_rank(), deepspeed.comm.get_world_size()
micro = engine.train_micro_batch_size_per_gpu()

start = 0
if args.resume:
    _, client_state = engine.load_checkpoint(args.save_dir)
    start = client_state["step"]

losses = {}
for step in range(start + 1, args.steps + 1):
    gen = torch.Generator().manual_seed(step)
    x, y = torch.randn(micro * world, 16, generator=gen), torch.randn(micro * world, 4, generator=gen)
    rows = slice(rank * micro, (rank + 1) * micro)
    loss = torch.nn.functional.mse_loss(engine(x[rows]), y[rows])
    engine.backward(loss)
    engine.step()
    losses[step] = loss.item()
    if step == args.save_at:
        engine.save_checkpoint(args.save_dir, tag=f"step{step}", client_state={"step": step})

out = Path(os.environ["LOSS_DIR"])
(out / f".loss.rank{rank}.json").write_text(json.dumps(losses))
os.replace(out / f".loss.rank{rank}.json", out / f"loss.rank{rank}.json")
