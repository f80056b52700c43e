"""Pipeline parallelism on 2 CPU ranks (gloo): the measured bubble against (p-1)/(m+p-1) for several
micro-batch counts m, and train_batch step time against the reference DeepSpeed 0.19.8's PipelineEngine,
same script and config on both.

A PipelineModule of ``--layers`` Linear+GELU blocks (hidden ``--hidden``), 2 stages (uniform split), SGD,
fp32, ZeRO 0. Bubble: each stage times its own forward+backward of one micro-batch alone (the same work
train_batch does per micro-batch, with the other rank busy the same way), and
``bubble = 1 - m * t_micro / t_step``; with p = 2 the ideal 1F1B step is (m + 1) micro-batch times, so
the theory is 1 / (m + 1). Communication and schedule overhead show up as bubble above theory.

    python benchmarks/pipeline_cpu.py [--steps 6] [--hidden 512] [--layers 8] [--micro 8]

The reference runs in its own interpreter (benchmarks/_reference.py; ``DS_REFERENCE_PYTHON``).
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

MICRO_COUNTS = (1, 2, 4, 8)


def _layers(hidden: int, n: int) -> list:
    torch.manual_seed(0)
    out = []
    for _ in range(n):
        out += [torch.nn.Linear(hidden, hidden), torch.nn.GELU()]
    return out


def _micro_time(module: torch.nn.Module, x: torch.Tensor, first: bool, reps: int = 5) -> float:
    """One micro-batch's forward+backward of this stage alone (median)."""
    times = []
    for _ in range(reps + 1):
        inp = x.clone().requires_grad_(not first)
        start = time.perf_counter()
        out = module(inp)
        out.float().pow(2).mean().backward()
        times.append(time.perf_counter() - start)
    module.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
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
    from deepspeed.pipe import PipelineModule

    deepspeed.init_distributed(dist_backend="gloo")
    results = {}
    for m in MICRO_COUNTS:
        model = PipelineModule(
            _layers(args.hidden, args.layers),
            num_stages=2,
            partition_method="uniform",
            loss_fn=lambda o, y: ((o - y) ** 2).mean(),
        )
        config = {
            "train_micro_batch_size_per_gpu": args.micro,
            "gradient_accumulation_steps": m,
            "optimizer": {"type": "SGD", "params": {"lr": 1e-3}},
            "steps_per_print": 10**9,
        }
        engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
        gen = torch.Generator().manual_seed(1)
        batch = (
            torch.randn(args.micro, args.hidden, generator=gen),
            torch.randn(args.micro, args.hidden, generator=gen),
        )
        times = []
        for _ in range(args.steps):
            torch.distributed.barrier()
            start = time.perf_counter()
            engine.train_batch(iter([batch] * m))
            times.append(time.perf_counter() - start)
        torch.distributed.barrier()
        t_micro = _micro_time(engine.module, batch[0], engine.is_first_stage())
        step = statistics.median(times[2:])
        results[m] = {"step_s": step, "t_micro_s": t_micro, "bubble": 1 - m * t_micro / step}
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, results)
    if rank == 0:
        Path(out).write_text(json.dumps({"version": deepspeed.__version__, "ranks": gathered}))


def _worker(args: argparse.Namespace) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(2, port, args, args.out), nprocs=2, start_method="spawn")


def _run(python: str, args: argparse.Namespace, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    cmd = [
        python,
        __file__,
        "--worker",
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--hidden",
        str(args.hidden),
        "--layers",
        str(args.layers),
        "--micro",
        str(args.micro),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        return {"error": (proc.stdout + proc.stderr)[-2000:]}
    return json.loads(out.read_text())


def _table(name: str, res: dict) -> list[str]:
    if "error" in res:
        return [f"{name}: failed: {res['error']}"]
    lines = [f"{name} {res['version']}:  m | step s | bubble stage0 | bubble stage1 | theory (p-1)/(m+p-1)"]
    for m in MICRO_COUNTS:
        r0, r1 = res["ranks"][0][str(m)], res["ranks"][1][str(m)]
        lines.append(
            f"  {m:2d} | {r0['step_s']:.4f} | {r0['bubble']:.3f} | {r1['bubble']:.3f} | {1 / (m + 1):.3f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out", type=str, default="")
    parser.add_argument("--ours-only", action="store_true")
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    out_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    ours = _run(sys.executable, args, out_dir / "pipe_bench_ours.json")
    lines = [
        f"pipeline_cpu: 2 stages on 2 gloo ranks, {args.layers} x Linear({args.hidden})+GELU, micro {args.micro}"
    ]
    lines += _table("this project", ours)
    if not args.ours_only:
        sys.path.insert(0, str(Path(__file__).parent))
        from _reference import reference_python

        ref = _run(str(reference_python()), args, out_dir / "pipe_bench_ref.json")
        lines += _table("reference DeepSpeed", ref)
        if "error" not in ours and "error" not in ref:
            for m in MICRO_COUNTS:
                a, b = ours["ranks"][0][str(m)]["step_s"], ref["ranks"][0][str(m)]["step_s"]
                lines.append(f"  m={m}: step time ours/reference = {a / b:.2f}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
