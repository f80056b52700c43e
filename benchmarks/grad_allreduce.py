"""Stage 0's gradient sum on one host: gloo's all_reduce against ds_zero's shared-memory all-reduce.

Two CPU ranks sum a gradient-sized fp32 buffer many times; each side is timed from "this rank's gradients
are final" to "this rank holds the sum" (the shared-memory side copies the gradients through the host's
fixed rows chunk by chunk and back, ``ds_zero.shm_collectives.HostCollectives.all_reduce_``). Ranks are lined up with a barrier before every timed call,
and both sides run in the same processes, alternating, so noise hits them alike.

    python benchmarks/grad_allreduce.py [--sizes 3440000 16777216] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time


def _measure(sizes: list[int], repeats: int) -> dict[int, dict[str, float]]:
    import torch

    import ds_comm
    from ds_zero import shm_collectives

    out: dict[int, dict[str, float]] = {}
    for numel in sizes:
        grads = torch.randn(numel)
        host = shm_collectives.setup(None, "cpu", nbytes=numel * 4)
        assert host is not None, "the shared-memory path is off (DS_ZERO_SHM_ALLREDUCE=0?)"
        times: dict[str, list[float]] = {"gloo": [], "shm": []}
        for _ in range(repeats):
            buf = grads.clone()
            ds_comm.barrier()
            start = time.perf_counter()
            ds_comm.all_reduce(buf)
            times["gloo"].append(time.perf_counter() - start)
            buf = grads.clone()
            ds_comm.barrier()
            start = time.perf_counter()
            host.all_reduce_([buf])
            times["shm"].append(time.perf_counter() - start)
        out[numel] = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3_440_000, 16_777_216])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    from ds_comm.testing import run_distributed

    results = run_distributed(
        _measure, world_size=2, args=(args.sizes, args.repeats), timeout=600, env={"OMP_NUM_THREADS": "1"}
    )
    print(f"{'elements':>12}{'MB':>8}{'gloo ms':>10}{'shm ms':>10}{'shm/gloo':>10}")
    for numel in args.sizes:
        gloo = max(r[numel]["gloo"] for r in results)
        shm = max(r[numel]["shm"] for r in results)
        print(f"{numel:>12}{numel * 4 / 1e6:>8.1f}{gloo:>10.2f}{shm:>10.2f}{shm / gloo:>10.3f}")


if __name__ == "__main__":
    main()
