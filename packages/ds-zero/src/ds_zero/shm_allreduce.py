"""What the shared-memory collectives of one host are built from: the check that they can serve a
group, the shared segment, and the barrier over pipes (the collectives: :mod:`ds_zero.shm_collectives`).

Note: [shared-memory all-reduce] When every rank of the group runs on this host (CPU training with the
``deepspeed`` launcher) and there are at most :data:`MAX_RANKS` of them, gradients need not cross the
loopback TCP stack: each rank writes a chunk of its bucket into its own row of a shared segment, one
barrier, and each rank adds up all rows itself
(:meth:`ds_zero.shm_collectives.HostCollectives.all_reduce_`). That is a read of every row per rank
instead of gloo's several socket copies and handshakes (DeepSpeed's CPU backend likewise reduces through shared memory, in C++);
``benchmarks/grad_allreduce.py`` keeps the measurement. Rows are summed in rank order, so every rank
reads bit-identical values. The segment lives in ``/dev/shm``; its file is unlinked as soon as every
rank has mapped it, so nothing outlives the job.
"""

from __future__ import annotations

import os
import select
import tempfile
import time
import uuid
from typing import Any

import torch
from torch import Tensor

import ds_comm

SHM_DIR = "/dev/shm"
ENV_SWITCH = (
    "DS_ZERO_SHM_ALLREDUCE"  # "0" turns every shared-memory collective off (this and shm_collectives)
)


def _host_id() -> str:
    return f"{os.uname().nodename}:{os.environ.get('MASTER_ADDR', '')}"


def single_host(group: Any) -> bool:
    """Whether every rank of ``group`` runs on this host (one small all-gather)."""
    names: list[Any] = [None] * ds_comm.get_world_size(group)
    ds_comm.all_gather_object(names, _host_id(), group=group)
    return len(set(names)) == 1


def usable(group: Any, nbytes: int, max_ranks: int | None = None) -> bool:
    """Whether the shared-memory path can serve ``group`` (at most ``max_ranks`` ranks, default
    :data:`MAX_RANKS`) for a segment of ``nbytes`` (same answer on every rank: rank 0 decides from its
    filesystem and host check, and tells the others)."""
    limit = MAX_RANKS if max_ranks is None else max_ranks
    if os.environ.get(ENV_SWITCH, "1") == "0" or not 2 <= ds_comm.get_world_size(group) <= limit:
        return False
    local = single_host(group)
    decision = [False]
    if ds_comm.get_rank(group) == 0:
        try:
            stat = os.statvfs(SHM_DIR)
            decision = [local and stat.f_bavail * stat.f_frsize > 2 * nbytes]
        except OSError:
            decision = [False]
    src = ds_comm.get_global_rank(group, 0) if group is not None else 0
    ds_comm.broadcast_object_list(decision, src=src, group=group)
    return bool(decision[0])


MAX_RANKS = 4  # each rank reads every row: beyond this many ranks a ring over sockets moves less data


class PipeBarrier:
    """A barrier for the ranks of one host over named pipes: each rank sends one byte (its rank) to every
    peer's pipe and reads one byte from each peer out of its own pipe.

    A gloo barrier costs about a millisecond on a loopback socket; this costs a few system calls. Pipe
    writes and reads go through the kernel, which orders the memory writes made before the barrier
    before the reads made after it. A peer may run one barrier ahead, so a byte from a peer that was
    already counted in this round is kept for the next one. A peer that never arrives turns into an
    error after ``timeout`` seconds instead of a hang.
    """

    def __init__(self, *, group: Any, timeout: float) -> None:
        self.rank = ds_comm.get_rank(group)
        self.world = ds_comm.get_world_size(group)
        self.timeout = timeout
        base = [
            os.path.join(
                SHM_DIR if os.path.isdir(SHM_DIR) else tempfile.gettempdir(),
                f"ds_zero_barrier_{uuid.uuid4().hex}",
            )
        ]
        src = ds_comm.get_global_rank(group, 0) if group is not None else 0
        ds_comm.broadcast_object_list(base, src=src, group=group)
        mine = f"{base[0]}_{self.rank}"
        os.mkfifo(mine, 0o600)
        self.inbox = os.open(mine, os.O_RDWR)  # read-write: opening never blocks, and EOF never comes
        ds_comm.barrier(group=group)
        self.peers = {r: os.open(f"{base[0]}_{r}", os.O_WRONLY) for r in range(self.world) if r != self.rank}
        ds_comm.barrier(group=group)
        os.unlink(mine)
        self.early: dict[int, int] = {}

    def wait(self) -> None:
        """Return once every rank has called ``wait`` as many times as this rank has."""
        token = bytes([self.rank])
        for fd in self.peers.values():
            os.write(fd, token)
        missing = set(self.peers)
        for peer in list(missing):
            if self.early.get(peer, 0) > 0:
                self.early[peer] -= 1
                missing.discard(peer)
        deadline = time.monotonic() + self.timeout
        while missing:
            ready, _, _ = select.select([self.inbox], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise RuntimeError(
                    f"shared-memory all-reduce: rank(s) {sorted(missing)} did not arrive within "
                    f"{self.timeout:g} s"
                )
            for peer in os.read(self.inbox, 4096):
                if peer in missing:
                    missing.discard(peer)
                else:
                    self.early[peer] = self.early.get(peer, 0) + 1


def shared_segment(numel: int, dtype: torch.dtype, *, group: Any = None, name: str = "ds_zero_shm") -> Tensor:
    """A ``numel``-element tensor that every rank of ``group`` maps from one ``/dev/shm`` file (collective).

    Rank 0 creates the file, every rank maps it, and rank 0 unlinks it once all have: the memory lives
    as long as the last mapping and no file outlives the job."""
    path = [
        os.path.join(
            SHM_DIR if os.path.isdir(SHM_DIR) else tempfile.gettempdir(), f"{name}_{uuid.uuid4().hex}"
        )
    ]
    src = ds_comm.get_global_rank(group, 0) if group is not None else 0
    ds_comm.broadcast_object_list(path, src=src, group=group)
    rank = ds_comm.get_rank(group)
    if rank == 0:
        with open(path[0], "wb") as handle:
            os.ftruncate(handle.fileno(), numel * torch.empty((), dtype=dtype).element_size())
    ds_comm.barrier(group=group)
    memory = torch.from_file(path[0], shared=True, size=numel, dtype=dtype)
    ds_comm.barrier(group=group)
    if rank == 0:
        os.unlink(path[0])
    return memory
