"""MoE layer throughput on 2 CPU ranks (gloo): this project's deepspeed.moe.layer.MoE against DeepSpeed 0.19.8's.

Each rank runs forward + backward of one MoE layer (4 experts, each Linear(h, 4h) -> GELU -> Linear(4h, h),
top-1 gating, capacity factor 1.0) on its own tokens, at expert-parallel size 1 (every rank holds all
experts) and 2 (two experts per rank, tokens exchanged by all-to-all). Reported: tokens per second over
both ranks (median step time). Both sides run this file, back to back, in their own interpreter; the
reference runs in the interpreter of benchmarks/_reference.py (``DS_REFERENCE_PYTHON``).

    python benchmarks/moe_cpu.py [--hidden 256] [--tokens 2048] [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

EXPERTS = 4


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out_path: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(world),
            "DS_ACCELERATOR": "cpu",
        }
    )
    torch.set_num_threads(1)
    import deepspeed
    from deepspeed.moe.layer import MoE

    deepspeed.init_distributed(dist_backend="gloo")
    h = args.hidden
    torch.manual_seed(0)
    expert = torch.nn.Sequential(torch.nn.Linear(h, 4 * h), torch.nn.GELU(), torch.nn.Linear(4 * h, h))
    layer = MoE(
        hidden_size=h,
        expert=expert,
        num_experts=EXPERTS,
        ep_size=args.ep,
        k=1,
        capacity_factor=1.0,
        min_capacity=4,
    )
    layer.set_deepspeed_parallelism()
    x = torch.randn(args.tokens, h, generator=torch.Generator().manual_seed(rank), requires_grad=True)
    times = []
    for _ in range(args.steps + 2):
        start = time.perf_counter()
        out, l_aux, _ = layer(x)
        (out.square().mean() + l_aux).backward()
        times.append(time.perf_counter() - start)
    if rank == 0:
        step = statistics.median(times[2:])
        Path(out_path).write_text(
            json.dumps(
                {"version": deepspeed.__version__, "step_s": step, "tokens_per_s": world * args.tokens / step}
            )
        )


def _worker(args: argparse.Namespace) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(2, port, args, args.out), nprocs=2, start_method="spawn")


def _run(python: str, args: argparse.Namespace, ep: int, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        python,
        __file__,
        "--worker",
        "--out",
        str(out),
        "--ep",
        str(ep),
        "--hidden",
        str(args.hidden),
        "--tokens",
        str(args.tokens),
        "--steps",
        str(args.steps),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"error": (proc.stdout + proc.stderr)[-1500:]}
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ep", type=int, default=1)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _reference import reference_python

    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "moe_cpu_run.json"
    print(
        f"MoE layer, 2 CPU ranks (gloo), {EXPERTS} experts of hidden {args.hidden} (FFN 4x), top-1, "
        f"{args.tokens} tokens per rank, forward+backward, median of {args.steps} steps, {args.rounds} rounds"
    )
    for ep in (1, 2):
        runs: dict[str, list[float]] = {"this project": [], "DeepSpeed 0.19.8": []}
        for round_ in range(args.rounds):
            for name, python in (
                ("this project", sys.executable),
                ("DeepSpeed 0.19.8", str(reference_python())),
            ):
                r = _run(python, args, ep, tmp)
                if "error" in r:
                    print(f"ep {ep} round {round_ + 1} {name:17s} failed: {r['error']}")
                    continue
                runs[name].append(r["tokens_per_s"])
                print(
                    f"ep {ep} round {round_ + 1} {name:17s} {r['tokens_per_s']:10.0f} tokens/s "
                    f"(step {r['step_s'] * 1000:.1f} ms)"
                )
        if all(runs.values()):
            ours, ref = (statistics.median(v) for v in runs.values())
            print(
                f"ep {ep}: median this project {ours:.0f} tokens/s, DeepSpeed 0.19.8 {ref:.0f} tokens/s, "
                f"ratio {ours / ref:.3f}"
            )


if __name__ == "__main__":
    main()
