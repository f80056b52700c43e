"""ZeRO stage 3's per-step host work at world size 1, against plain PyTorch, on the CPU.

On a fast GPU a small model's step is bound by the host: plain bf16 training of the 163M GPT in
``zero3_gpu.py`` spent 22.5 ms of host time per 24.7 ms step on an H200, so every Python call and
kernel launch that stage 3 adds shows in the step time. This benchmark measures that added host work
where no GPU is needed: the same GPT code (``zero3_gpu.py``) shrunk until compute is small (d=64,
12 layers, vocabulary 512, micro batch 2, sequence 32), one thread, gloo world of one, timed as
``plain_bf16`` (bf16 weights, fused AdamW, clipping) and ``zero3`` (``ds_zero.wrap`` stage 3, bf16
mixed precision, DeepSpeed's stage-3 defaults, clipping) in alternating rounds. The ratio is the
host-side cost of stage 3 relative to a plain loop; it is a proxy, not the GPU figure.

    python benchmarks/zero3_host_overhead.py [--rounds 5] [--steps 40]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
import zero3_gpu as gpt  # noqa: E402  (puts the package sources on sys.path)

# The GPT in zero3_gpu reads its shape from module globals: shrink it so the step is host-bound.
gpt.VOCAB, gpt.D, gpt.LAYERS, gpt.HEADS = 512, 64, 12, 4
SEQ, MICRO = 32, 2


def median_ms(step, steps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import ds_comm

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    ds_comm.init_distributed(dist_backend="gloo", verbose=False)
    gen = torch.Generator().manual_seed(1)
    data = (
        torch.randint(0, gpt.VOCAB, (MICRO, SEQ), generator=gen),
        torch.randint(0, gpt.VOCAB, (MICRO, SEQ), generator=gen),
    )
    cpu = torch.device("cpu")
    plain = gpt.plain_step(data, cpu, SEQ, amp=False)
    zero3, trainer = gpt.zero3_step(data, cpu, SEQ)
    print(
        f"zero3: {len(trainer.sharded.units)} unit(s), {len(trainer.sharded.plan.persistent)} whole parameters"
    )
    ratios = []
    for r in range(args.rounds):
        a, b = median_ms(plain, args.steps), median_ms(zero3, args.steps)
        ratios.append(b / a)
        print(f"round {r}: plain_bf16 {a:.2f} ms, zero3 {b:.2f} ms, ratio {b / a:.3f}", flush=True)
    print(
        f"zero3 / plain_bf16 host time per step: median {statistics.median(ratios):.3f}x over {args.rounds} rounds"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
