"""Two CPU ranks on this machine join one process group with `deepspeed.init_distributed()` and
run the collectives ZeRO is made of. No launcher: the script starts its own ranks, setting the same
variables the `deepspeed` launcher sets.

    python examples/collectives_demo.py
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket


def rank_main(rank: int, world_size: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",
    )
    import torch

    import deepspeed
    import deepspeed.comm as dist

    deepspeed.init_distributed()  # gloo on CPU; nccl on CUDA
    me, world = dist.get_rank(), dist.get_world_size()
    with dist.comms_log.capture() as log:
        grad = torch.full((4,), float(me + 1))
        dist.all_reduce(grad)
        shard = torch.empty(2)
        dist.reduce_scatter_tensor(shard, torch.arange(4.0) * (me + 1))
        full = torch.empty(2 * world)
        dist.all_gather_into_tensor(full, shard)
    print(
        f"rank {me}/{world}: all_reduce={grad.tolist()} my reduce_scatter shard={shard.tolist()} "
        f"all_gather={full.tolist()}",
        flush=True,
    )
    dist.barrier()
    if me == 0:
        for rec in log.records():
            print(
                f"  logged {rec.op}: {rec.nbytes} bytes over {rec.group_size} ranks in {rec.seconds * 1e3:.2f} ms"
            )
    dist.destroy_process_group()


def main(world_size: int = 2) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=rank_main, args=(r, world_size, port)) for r in range(world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    codes = [p.exitcode for p in procs]
    if any(code != 0 for code in codes):
        raise SystemExit(f"a rank failed: exit codes {codes}")
    print("demo ok: 2 CPU ranks formed a gloo group and ran all_reduce, reduce_scatter and all_gather")


if __name__ == "__main__":
    main()
