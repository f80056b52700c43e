"""The tensor-parallel mechanism alone, on 2 CPU ranks (gloo): AutoTP's layers (ds_parallel.tensor: plain
local shards, one all-reduce per row-parallel forward and per column-parallel input in backward) against
torch's ``parallelize_module`` with ``ColwiseParallel``/``RowwiseParallel`` (DTensor) on the same MLP stack.

Both issue the same collectives; the figure is the forward + backward time per step (median of rounds),
and the two must agree numerically. (ZeRO 1/2 here needs plain-tensor parameters, Note [why not DTensor]
in ds_parallel.tensor.comm; this measures what the hand-written pair costs against DTensor's dispatch.)

    python benchmarks/autotp_vs_dtensor.py [--hidden 256] [--blocks 4] [--iters 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

from ds_comm.testing import run_distributed


class Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.up_proj = nn.Linear(hidden, 4 * hidden)
        self.down_proj = nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down_proj(torch.nn.functional.silu(self.up_proj(x)))


def _model(hidden: int, blocks: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[Block(hidden) for _ in range(blocks)])


def _time(model: nn.Module, x: torch.Tensor, iters: int) -> tuple[float, float]:
    out = model(x).sum()
    out.backward()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        out = model(x)
        out = out.full_tensor() if hasattr(out, "full_tensor") else out
        out.sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times), float(out.sum())


def rank_fn(hidden: int, blocks: int, iters: int, rounds: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from ds_parallel.tensor import partition_model

    torch.set_num_threads(1)
    x = torch.randn(4, 128, hidden, generator=torch.Generator().manual_seed(1))
    ours_model = _model(hidden, blocks)
    partition_model(ours_model, dist.group.WORLD, dist.get_world_size())
    dt_model = _model(hidden, blocks)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    plan = {f"{i}.up_proj": ColwiseParallel() for i in range(blocks)}
    plan.update({f"{i}.down_proj": RowwiseParallel() for i in range(blocks)})
    parallelize_module(dt_model, mesh, plan)
    ours, dtensor = [], []
    for _ in range(rounds):
        t, ours_sum = _time(ours_model, x, iters)
        ours.append(t)
        t, dt_sum = _time(dt_model, x, iters)
        dtensor.append(t)
    return {
        "ours_ms": 1000 * statistics.median(ours),
        "dtensor_ms": 1000 * statistics.median(dtensor),
        "rounds_ours": ours,
        "rounds_dtensor": dtensor,
        "same_output": abs(ours_sum - dt_sum) < 1e-3 * abs(dt_sum),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    a = parser.parse_args()
    r = run_distributed(rank_fn, 2, 900, (a.hidden, a.blocks, a.iters, a.rounds))[0]
    print(
        f"TP 2 on 2 CPU ranks (gloo), {a.blocks} MLP blocks hidden {a.hidden} (4x inner), tokens 4 x 128, "
        f"forward+backward, median of {a.iters} iterations per round, {a.rounds} rounds"
    )
    print(
        f"per round ms: ours {[round(1000 * t, 2) for t in r['rounds_ours']]}  "
        f"DTensor {[round(1000 * t, 2) for t in r['rounds_dtensor']]}"
    )
    print(
        f"ds_parallel.tensor layers {r['ours_ms']:.2f} ms, DTensor parallelize_module {r['dtensor_ms']:.2f} ms, "
        f"ratio {r['ours_ms'] / r['dtensor_ms']:.3f}; same output: {r['same_output']}"
    )


if __name__ == "__main__":
    main()
