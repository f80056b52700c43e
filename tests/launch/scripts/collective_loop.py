"""Rank script for lost-host tests: join gloo with a collective timeout of COLLECTIVE_TIMEOUT seconds,
record this rank's pid in OUT_DIR/pid.<rank>, all-reduce once, write one byte to OUT_DIR/ready.fifo,
then keep all-reducing (a job in progress) until a collective fails."""

import datetime
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

out = Path(os.environ["OUT_DIR"])
rank = int(os.environ["RANK"])
(out / f"pid.{rank}").write_text(str(os.getpid()))
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=float(os.environ["COLLECTIVE_TIMEOUT"])))
value = torch.ones(1)
dist.all_reduce(value)
with open(out / "ready.fifo", "wb", buffering=0) as ready:
    ready.write(b"x")
while True:
    dist.all_reduce(value)
    time.sleep(0.2)  # the work between steps: keeps four ranks from spinning two busy cores
