"""What MPI itself knows about this rank, through mpi4py (an optional dependency).

DeepSpeed's communication always goes through torch.distributed; MPI only tells each rank its place
and rank 0's address, so a job started by ``mpirun`` needs no launcher variables at all.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class MPIWorld:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str


def host_address() -> str:
    """An address of this host that other hosts can reach (falls back to the loopback address)."""
    hostname = socket.gethostname()
    try:
        infos = socket.getaddrinfo(hostname, None, family=socket.AF_INET)
    except OSError:
        return "127.0.0.1"
    addresses = [str(info[4][0]) for info in infos]  # an AF_INET sockaddr's host is a str
    routable = [a for a in addresses if not a.startswith("127.")]
    return (routable or addresses or ["127.0.0.1"])[0]


@cache
def world_info() -> MPIWorld | None:
    """Rank, size, node-local rank (from processor names) and rank 0's address; None without mpi4py.

    Collective over MPI_COMM_WORLD: every rank of the job must call it.
    """
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    master_addr = comm.bcast(host_address() if rank == 0 else None, root=0)
    names = comm.allgather(MPI.Get_processor_name())
    local_rank = names[:rank].count(names[rank])
    return MPIWorld(
        rank=rank,
        world_size=size,
        local_rank=local_rank,
        local_world_size=names.count(names[rank]),
        master_addr=master_addr,
    )


def mpi_discovery(distributed_port: int = 29500, verbose: bool = True) -> MPIWorld:
    """DeepSpeed's ``deepspeed.comm.mpi_discovery``: ask MPI for this rank's place and export it as the
    torchrun variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``), so that a following ``init_process_group("env://")`` forms the group.

    Collective over MPI_COMM_WORLD (every rank of an ``mpirun`` job must call it); needs mpi4py.
    """
    import logging
    import os

    world = world_info()
    if world is None:
        raise RuntimeError("mpi_discovery needs mpi4py (pip install mpi4py) in a job started by mpirun")
    os.environ.update(
        {
            "RANK": str(world.rank),
            "WORLD_SIZE": str(world.world_size),
            "LOCAL_RANK": str(world.local_rank),
            "LOCAL_SIZE": str(world.local_world_size),
            "MASTER_ADDR": world.master_addr,
            "MASTER_PORT": str(distributed_port),
        }
    )
    if verbose:
        logging.getLogger("ds_comm").info(
            "mpi_discovery: rank=%d world_size=%d local_rank=%d master=%s:%d",
            world.rank,
            world.world_size,
            world.local_rank,
            world.master_addr,
            distributed_port,
        )
    return world
