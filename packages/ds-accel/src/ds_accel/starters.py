"""Which environment variables each process starter (the MPIs, SLURM, torch's elastic agent) sets for a rank.

This is the one table of them: ``ds_comm.env`` reads it to discover a rank's place in the job, and the
launcher's rank shim (``ds_launch.rank_exec``) to map a starter's variables onto DeepSpeed's. It lives in
ds-accel, torch-free, because it is the one package both depend on that a launcher-only install has.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RankVariables:
    """The variables a process starter sets for rank, world size, local rank and local size, and (where
    the starter knows it) the node index and node count."""

    starter: str
    """The starter's name as messages show it."""
    rank: str
    size: str
    local_rank: str
    local_size: str
    cross_rank: str | None = None
    cross_size: str | None = None


OPENMPI = RankVariables(
    "OpenMPI",
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
)
MVAPICH = RankVariables(
    "MVAPICH",
    "MV2_COMM_WORLD_RANK",
    "MV2_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_LOCAL_RANK",
    "MV2_COMM_WORLD_LOCAL_SIZE",
)
# MPICH and Intel MPI share the PMI variables (Hydra sets both families).
MPICH = RankVariables("MPICH/Intel MPI", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")
# SLURM_NTASKS_PER_NODE is only set when the job gave --ntasks-per-node (and may read "4(x2)").
SLURM = RankVariables(
    "SLURM",
    "SLURM_PROCID",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_NTASKS_PER_NODE",
    "SLURM_NODEID",
    "SLURM_NNODES",
)
TORCHELASTIC = RankVariables(
    "torch elastic", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE"
)

#: The MPI flavours, in the order rank discovery tries them.
MPI_STARTERS: tuple[RankVariables, ...] = (OPENMPI, MVAPICH, MPICH)

#: ``deepspeed --launcher`` scheme names (and torch's elastic agent) -> the variables their ranks get.
STARTERS: dict[str, RankVariables] = {
    "openmpi": OPENMPI,
    "mpich": MPICH,
    "impi": MPICH,
    "mvapich": MVAPICH,
    "slurm": SLURM,
    "torchelastic": TORCHELASTIC,
}
