"""ds-kernels on the CPU: DeepSpeedCPUAdam (torch's fused CPU AdamW underneath) against torch.optim.AdamW.

Measured side by side in one process on 2 threads, for a few parameter layouts:

* ``torch AdamW for-loop``   -- ``torch.optim.AdamW(foreach=False)``, one tensor at a time;
* ``torch AdamW foreach``    -- ``torch.optim.AdamW(foreach=True)``, multi-tensor ops;
* ``ds DeepSpeedCPUAdam``    -- ds_kernels' CPU optimizer (ZeRO-Offload's), fp32 states;
* ``ds CPUAdam bf16 params`` -- the same with bf16 parameters and fp32 states (staged through fp32);
* ``reference DeepSpeedCPUAdam`` -- DeepSpeed 0.19.8's hand-vectorised C++ op, when ``--reference`` is
  given and its venv can build the op (timed in that venv, same sizes and threads).

Each figure is the best and the median step time over repeats after warm-up (the contenders timed
in rotation, so that other processes' load falls on all alike), with the bandwidth the best time
achieves at 28 bytes per parameter (fp32: read p, g, m, v; write p, m, v). The reference runs in
its own venv right after ours, on the same sizes and threads.

    python benchmarks/kernels_cpu.py [--threads 2] [--reps 9] [--reference]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("ds-kernels", "ds-accel"):
    src = ROOT / "packages" / pkg / "src"
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))

import torch  # noqa: E402

import ds_kernels as K  # noqa: E402

LR, WD = 1e-3, 0.01


def layouts() -> dict[str, list[tuple[int, ...]]]:
    """Parameter shapes: one large flat tensor, and a small transformer's 12-tensor layers."""
    d = 512
    layer = [
        (3 * d, d),
        (3 * d,),
        (d, d),
        (d,),
        (4 * d, d),
        (4 * d,),
        (d, 4 * d),
        (d,),
        (d,),
        (d,),
        (d,),
        (d,),
    ]
    return {
        "flat 4M": [(1 << 22,)],
        "flat 32M": [(1 << 25,)],
        "transformer d=512 x8 (97 tensors)": [(8192, d)] + layer * 8,
    }


def _params(shapes, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen).to(dtype))
        p.grad = torch.randn(shape, generator=gen).mul_(1e-3).to(dtype)
        params.append(p)
    return params


def interleaved_steps(
    optimizers: dict[str, torch.optim.Optimizer], reps: int, warmup: int = 2
) -> dict[str, tuple[float, float]]:
    """(best, median) seconds per step of each optimizer, timing them in rotation so that load from
    other processes on a shared machine falls on all of them alike."""
    for opt in optimizers.values():
        for _ in range(warmup):
            opt.step()
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(reps):
        for name, opt in optimizers.items():
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


REFERENCE_SCRIPT = r"""
import json, statistics, sys, time, torch
from deepspeed.ops.adam import DeepSpeedCPUAdam
torch.set_num_threads(int(sys.argv[1]))
shapes, reps = json.loads(sys.argv[2]), int(sys.argv[3])
gen = torch.Generator().manual_seed(0)
params = []
for s in shapes:
    p = torch.nn.Parameter(torch.randn(s, generator=gen)); p.grad = torch.randn(s, generator=gen) * 1e-3
    params.append(p)
opt = DeepSpeedCPUAdam(params, lr=1e-3, weight_decay=0.01)
for _ in range(2): opt.step()
times = []
for _ in range(reps):
    t = time.perf_counter(); opt.step(); times.append(time.perf_counter() - t)
print(json.dumps([min(times), statistics.median(times)]))
"""


def reference_step(shapes, threads: int, reps: int) -> tuple[float, float] | None:
    """(best, median) step of DeepSpeed 0.19.8's DeepSpeedCPUAdam in the reference venv, or None."""
    try:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from _reference import reference_python

        python = reference_python()
        out = subprocess.run(
            [str(python), "-c", REFERENCE_SCRIPT, str(threads), json.dumps(shapes), str(reps)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if out.returncode != 0:
            print(f"  (reference DeepSpeedCPUAdam unavailable: {out.stderr.strip().splitlines()[-1:]})")
            return None
        best, median = json.loads(out.stdout.strip().splitlines()[-1])
        return float(best), float(median)
    except Exception as exc:  # the reference is optional; its absence must not hide our figures
        print(f"  (reference DeepSpeedCPUAdam unavailable: {exc!r})")
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument(
        "--reference", action="store_true", help="also time DeepSpeed 0.19.8's DeepSpeedCPUAdam"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, ds_kernels {K.__version__}, {torch.get_num_threads()} threads")
    for name, shapes in layouts().items():
        count = sum(torch.Size(s).numel() for s in shapes)
        print(f"\n== {name}: {len(shapes)} tensors, {count / 1e6:.1f}M params")
        optimizers = {
            "torch AdamW for-loop": torch.optim.AdamW(_params(shapes), lr=LR, weight_decay=WD, foreach=False),
            "torch AdamW foreach": torch.optim.AdamW(_params(shapes), lr=LR, weight_decay=WD, foreach=True),
            "ds DeepSpeedCPUAdam": K.DeepSpeedCPUAdam(_params(shapes), lr=LR, weight_decay=WD),
            "ds CPUAdam bf16 params": K.DeepSpeedCPUAdam(
                _params(shapes, torch.bfloat16), lr=LR, weight_decay=WD
            ),
        }
        rows = interleaved_steps(optimizers, args.reps)
        del optimizers
        if args.reference:
            ref = reference_step([list(s) for s in shapes], args.threads, args.reps)
            if ref is not None:
                rows["reference DeepSpeedCPUAdam"] = ref
        ours = rows["ds DeepSpeedCPUAdam"][0]
        print(f"  {'':<28} {'best':>9}     {'median':>9}     {'best GB/s':>9}  {'ds speedup (best)':>17}")
        for label, (best, median) in rows.items():
            print(
                f"  {label:<28} {best * 1e3:9.2f} ms  {median * 1e3:9.2f} ms  {28 * count / best / 1e9:9.2f}  "
                f"{best / ours:16.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
