"""NVMe offload: the swap engine's throughput against ``dd`` with direct I/O, and the step-time cost.

1. I/O: ``ds_kernels.aio`` (the engine ``offload_optimizer.device: nvme`` swaps through; DeepSpeed's
   ``aio_handle`` API) writes and reads one ``--mib`` file with O_DIRECT from an aligned buffer, for
   each ``--threads`` value (``aio.intra_op_parallelism``), and ``dd`` does the same with
   ``oflag=direct`` / ``iflag=direct`` (``bs`` = ``--block-mib``) on the same file system, in
   alternating rounds; the best of ``--rounds`` is reported (so a neighbour's burst on a shared disk
   hurts both sides alike). Each write ends with ``fsync`` on both sides (``conv=fsync`` for ``dd``).
2. Step: a 16-layer 1024-wide MLP (16.8M parameters, Adam states 134 MB), ZeRO stage 2, one gloo rank,
   ``offload_optimizer`` ``cpu`` against ``nvme`` (``pipeline_read``/``pipeline_write``, 4 buffers),
   mean step time over ``--steps`` after one warm-up step.

    python benchmarks/nvme_swap_throughput.py [--dir /work/nvme-bench] [--mib 1024] [--threads 1 4]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for pkg in ("ds-accel", "ds-comm", "ds-kernels", "ds-zero", "ds-engine", "ds-parallel"):
    sys.path.insert(0, str(ROOT / "packages" / pkg / "src"))
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from ds_kernels import aio  # noqa: E402


def _dd(args: list[str]) -> float:
    """Run dd; its own reported rate in MB/s (10^6 bytes), converted to MiB/s."""
    out = subprocess.run(["dd", *args], capture_output=True, text=True, check=True).stderr
    m = re.search(r"copied, ([\d.]+) s", out)
    nbytes = int(re.search(r"^(\d+) bytes", out.splitlines()[-1]).group(1))
    return nbytes / float(m.group(1)) / 2**20


def _engine_rate(path: str, buf: torch.Tensor, threads: int, block: int, write: bool) -> float:
    engine = aio.AioEngine(block_size=block, queue_depth=8, intra_op_parallelism=threads)
    try:
        t0 = time.perf_counter()
        engine.submit(buf, path, 0, write=write).result()
        if write:
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        return buf.numel() / (time.perf_counter() - t0) / 2**20
    finally:
        engine.close()


def io_bench(
    folder: str, mib: int, block_mib: int, threads: list[int], rounds: int
) -> list[tuple[str, float, float]]:
    path = os.path.join(folder, "swap.bin")
    buf = aio.aligned_empty(mib << 20)
    buf.copy_(torch.randint(0, 255, (buf.numel(),), dtype=torch.uint8))
    fd, direct = aio._open(path, True, True)
    os.close(fd)
    if not direct:
        print(f"[bench] note: {folder}'s file system refuses O_DIRECT: both sides fall back", file=sys.stderr)
    best: dict[str, list[float]] = {}
    for _ in range(rounds):
        dd_w = _dd(
            [
                "if=/dev/zero",
                f"of={path}",
                f"bs={block_mib}M",
                f"count={mib // block_mib}",
                "oflag=direct",
                "conv=fsync",
            ]
        )
        dd_r = _dd([f"if={path}", "of=/dev/null", f"bs={block_mib}M", "iflag=direct"])
        for name, rate in (("dd write", dd_w), ("dd read", dd_r)):
            best.setdefault(name, []).append(rate)
        for t in threads:
            best.setdefault(f"engine write t={t}", []).append(
                _engine_rate(path, buf, t, block_mib << 20, True)
            )
            best.setdefault(f"engine read t={t}", []).append(
                _engine_rate(path, buf, t, block_mib << 20, False)
            )
    os.remove(path)
    rows = []
    for t in threads:
        for kind in ("write", "read"):
            ours, theirs = max(best[f"engine {kind} t={t}"]), max(best[f"dd {kind}"])
            rows.append((f"{kind} (threads={t})", ours, theirs))
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_bench(folder: str, steps: int) -> dict[str, float]:
    import deepspeed

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    out = {}
    for device in ("cpu", "nvme"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(16)])
        section = {"device": device}
        if device == "nvme":
            section.update(nvme_path=folder, buffer_count=4, pipeline_read=True, pipeline_write=True)
        cfg = {
            "train_batch_size": 8,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
            "aio": {"block_size": 1 << 20, "queue_depth": 8, "intra_op_parallelism": 4},
            "zero_optimization": {"stage": 2, "reduce_bucket_size": 2_000_000, "offload_optimizer": section},
        }
        engine, *_ = deepspeed.initialize(model=model, config=cfg)
        x = torch.randn(8, 1024)
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            engine.backward(engine(x).square().mean())
            engine.step()
            if i:
                times.append(time.perf_counter() - t0)
        out[device] = sum(times) / len(times)
        engine.destroy() if hasattr(engine, "destroy") else None
        del engine
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dir", default=None, help="a folder on the file system to measure (default: under /work)"
    )
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--block-mib", type=int, default=1)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    folder = args.dir or tempfile.mkdtemp(prefix="nvme-bench-", dir=str(ROOT.parent))
    os.makedirs(folder, exist_ok=True)
    try:
        fs = (
            subprocess.run(["df", "-T", folder], capture_output=True, text=True)
            .stdout.splitlines()[-1]
            .split()
        )
        print(
            f"file system: {fs[0]} ({fs[1]}), folder {folder}, file {args.mib} MiB, block {args.block_mib} MiB"
        )
        print(f"{'I/O':<22}{'engine MiB/s':>14}{'dd MiB/s':>12}{'engine/dd':>11}")
        for name, ours, theirs in io_bench(folder, args.mib, args.block_mib, args.threads, args.rounds):
            print(f"{name:<22}{ours:>14.0f}{theirs:>12.0f}{ours / theirs:>10.0%}")
        steps = step_bench(folder, args.steps)
        print(
            f"step, ZeRO 2, 16.8M params, 1 rank: cpu offload {steps['cpu'] * 1e3:.0f} ms, nvme offload "
            f"{steps['nvme'] * 1e3:.0f} ms ({steps['nvme'] / steps['cpu']:.2f}x)"
        )
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
