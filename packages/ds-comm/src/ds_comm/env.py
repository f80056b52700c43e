"""Where a rank learns who it is: discovery of rank, world size, local rank and rendezvous address.

Discovery is data, not side effects: :func:`discover` returns a :class:`DistEnvironment` whose
``sources`` say which variable (or argument, or MPI call) gave each value, so a user whose job
forms the wrong world can see why. Sources are tried in this order, the first that applies wins:

1. explicit ``rank``/``world_size`` arguments;
2. launcher variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``),
   as set by torchrun and the ``deepspeed`` launcher;
3. MPI launcher variables (OpenMPI ``OMPI_COMM_WORLD_*``, MPICH/Intel MPI ``PMI_*``, MVAPICH
   ``MV2_*``), with AzureML's master-node variables, and mpi4py for what the variables lack
   (rank 0's address broadcast, local rank from processor names);
4. SLURM (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, first host of ``SLURM_NODELIST``).

Note [incomplete environments]: once a source applies (one of its variables is set), every value it
must provide is required; a missing one is an error naming the variable, rather than a silent fall
through to a different source that would form a different world.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

from ds_accel.starters import MPI_STARTERS, SLURM

DEFAULT_PORT = 29500


class DistEnvironmentError(RuntimeError):
    """The environment names a launcher but lacks a value that launcher must provide."""


@dataclass(frozen=True)
class DistEnvironment:
    """Everything a rank needs to join the process group, and where each value came from."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None
    master_port: int
    local_world_size: int | None = None
    #: field name -> human-readable origin ("RANK", "OMPI_COMM_WORLD_RANK", "argument", "mpi4py", ...).
    sources: Mapping[str, str] = field(default_factory=dict)
    #: the source family that applied: "arguments", "launcher", "mpi", "slurm" or "single-process".
    launcher: str = "launcher"

    def export(self, environ: MutableMapping[str, str] | None = None) -> None:
        """Write the torchrun-style variables that ``env://`` rendezvous and user code read."""
        environ = os.environ if environ is None else environ
        environ["RANK"] = str(self.rank)
        environ["WORLD_SIZE"] = str(self.world_size)
        environ["LOCAL_RANK"] = str(self.local_rank)
        if self.master_addr is not None:
            environ["MASTER_ADDR"] = self.master_addr
        environ["MASTER_PORT"] = str(self.master_port)
        if self.local_world_size is not None:
            environ["LOCAL_SIZE"] = str(self.local_world_size)
            environ.setdefault("LOCAL_WORLD_SIZE", str(self.local_world_size))

    def describe(self) -> str:
        """One line per value with its origin, for logs and error messages."""
        values = {
            "rank": self.rank,
            "world_size": self.world_size,
            "local_rank": self.local_rank,
            "master_addr": self.master_addr,
            "master_port": self.master_port,
        }
        return ", ".join(f"{k}={v} (from {self.sources.get(k, '?')})" for k, v in values.items())


def _int(environ: Mapping[str, str], name: str) -> int:
    raw = environ[name]
    try:
        return int(raw)
    except ValueError:
        raise DistEnvironmentError(f"{name}={raw!r} is not an integer") from None


def _require(environ: Mapping[str, str], names: list[str], launcher: str, hint: str = "") -> None:
    missing = [n for n in names if not environ.get(n)]
    if missing:
        present = [n for n in names if environ.get(n)]
        raise DistEnvironmentError(
            f"incomplete {launcher} environment: {', '.join(missing)} missing "
            f"(found {', '.join(present) or 'none'}){hint}"
        )


# ---------------------------------------------------------------------------------------------------
# 2. launcher (torchrun / deepspeed) variables
# ---------------------------------------------------------------------------------------------------
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _from_launcher(environ: Mapping[str, str], port: int) -> DistEnvironment | None:
    if not any(environ.get(v) for v in _LAUNCHER_VARS):
        return None
    _require(environ, ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"], "torchrun/launcher")
    sources = {
        "rank": "RANK",
        "world_size": "WORLD_SIZE",
        "local_rank": "LOCAL_RANK",
        "master_addr": "MASTER_ADDR",
    }
    master_port, sources["master_port"] = _port(environ, port)
    local_size = environ.get("LOCAL_SIZE") or environ.get("LOCAL_WORLD_SIZE")
    return DistEnvironment(
        rank=_int(environ, "RANK"),
        world_size=_int(environ, "WORLD_SIZE"),
        local_rank=_int(environ, "LOCAL_RANK"),
        master_addr=environ["MASTER_ADDR"],
        master_port=master_port,
        local_world_size=int(local_size) if local_size else None,
        sources=sources,
        launcher="launcher",
    )


def _port(environ: Mapping[str, str], default: int) -> tuple[int, str]:
    if environ.get("MASTER_PORT"):
        return _int(environ, "MASTER_PORT"), "MASTER_PORT"
    return default, "distributed_port argument"


# ---------------------------------------------------------------------------------------------------
# 3. MPI launchers (+ AzureML, + mpi4py)
# ---------------------------------------------------------------------------------------------------
def _azureml_master(environ: Mapping[str, str], single_node: bool) -> tuple[str, int | None, str] | None:
    """AzureML names the master node itself: ``AZ_BATCH_MASTER_NODE=host:port`` (multi-node) or
    ``AZ_BATCHAI_MPI_MASTER_NODE=host`` (the node of rank 0 in a single-node job)."""
    if single_node and environ.get("AZ_BATCHAI_MPI_MASTER_NODE"):
        return environ["AZ_BATCHAI_MPI_MASTER_NODE"], None, "AZ_BATCHAI_MPI_MASTER_NODE"
    value = environ.get("AZ_BATCH_MASTER_NODE")
    if value:
        host, _, port = value.partition(":")
        return host, int(port) if port else None, "AZ_BATCH_MASTER_NODE"
    if environ.get("AZ_BATCHAI_MPI_MASTER_NODE"):
        return environ["AZ_BATCHAI_MPI_MASTER_NODE"], None, "AZ_BATCHAI_MPI_MASTER_NODE"
    return None


def _from_mpi(environ: Mapping[str, str], port: int, auto_mpi_discovery: bool) -> DistEnvironment | None:
    flavour = next((f for f in MPI_STARTERS if environ.get(f.rank) or environ.get(f.size)), None)
    if flavour is None:
        return None
    from ds_comm import mpi  # mpi4py is optional; imported only for an MPI-launched rank

    mpi_world = mpi.world_info() if auto_mpi_discovery else None
    hint = "" if mpi_world else " (install mpi4py, or leave auto_mpi_discovery on, to ask MPI instead)"
    sources: dict[str, str] = {}
    values: dict[str, int] = {}
    for key, var in (
        ("rank", flavour.rank),
        ("world_size", flavour.size),
        ("local_rank", flavour.local_rank),
    ):
        if environ.get(var):
            values[key], sources[key] = _int(environ, var), var
        elif mpi_world is not None:
            values[key], sources[key] = getattr(mpi_world, key), "mpi4py"
        else:
            _require(environ, [var], flavour.starter, hint)
    local_size = environ.get(flavour.local_size)
    local_world = int(local_size) if local_size else (mpi_world.local_world_size if mpi_world else None)
    single_node = local_world is not None and local_world == values["world_size"]

    master_port, sources["master_port"] = _port(environ, port)
    if environ.get("MASTER_ADDR"):
        master_addr, sources["master_addr"] = environ["MASTER_ADDR"], "MASTER_ADDR"
    elif (aml := _azureml_master(environ, single_node)) is not None:
        master_addr, aml_port, sources["master_addr"] = aml
        if aml_port is not None and not environ.get("MASTER_PORT"):
            master_port, sources["master_port"] = aml_port, "AZ_BATCH_MASTER_NODE"
    elif mpi_world is not None:
        master_addr, sources["master_addr"] = mpi_world.master_addr, "mpi4py (broadcast from rank 0)"
    else:
        raise DistEnvironmentError(
            f"incomplete {flavour.starter} environment: MASTER_ADDR missing and mpi4py is unavailable to "
            "broadcast rank 0's address (set MASTER_ADDR or install mpi4py)"
        )
    return DistEnvironment(
        rank=values["rank"],
        world_size=values["world_size"],
        local_rank=values["local_rank"],
        master_addr=master_addr,
        master_port=master_port,
        local_world_size=local_world,
        sources=sources,
        launcher="mpi",
    )


# ---------------------------------------------------------------------------------------------------
# 4. SLURM
# ---------------------------------------------------------------------------------------------------
def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[03-05,9],cpu1"`` -> ``"gpu03"``."""
    first = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if first is None:
        raise DistEnvironmentError(f"SLURM_NODELIST={nodelist!r} is not a SLURM host list")
    prefix, _, ranges = first.groups()
    if not ranges:
        return prefix
    lowest = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{lowest}"


def _from_slurm(environ: Mapping[str, str], port: int) -> DistEnvironment | None:
    if not environ.get(SLURM.rank):
        return None
    nodelist_var = "SLURM_STEP_NODELIST" if environ.get("SLURM_STEP_NODELIST") else "SLURM_NODELIST"
    if not environ.get(nodelist_var) and environ.get("SLURM_JOB_NODELIST"):
        nodelist_var = "SLURM_JOB_NODELIST"
    required = [SLURM.rank, SLURM.size, SLURM.local_rank]
    if not environ.get("MASTER_ADDR"):
        required.append(nodelist_var)
    _require(environ, required, "SLURM")
    sources = {"rank": SLURM.rank, "world_size": SLURM.size, "local_rank": SLURM.local_rank}
    if environ.get("MASTER_ADDR"):
        master_addr, sources["master_addr"] = environ["MASTER_ADDR"], "MASTER_ADDR"
    else:
        master_addr, sources["master_addr"] = (
            first_slurm_host(environ[nodelist_var]),
            f"first host of {nodelist_var}",
        )
    master_port, sources["master_port"] = _port(environ, port)
    tasks_per_node = environ.get(SLURM.local_size, "").split("(")[0]
    return DistEnvironment(
        rank=_int(environ, SLURM.rank),
        world_size=_int(environ, SLURM.size),
        local_rank=_int(environ, SLURM.local_rank),
        master_addr=master_addr,
        master_port=master_port,
        local_world_size=int(tasks_per_node) if tasks_per_node.isdigit() else None,
        sources=sources,
        launcher="slurm",
    )


# ---------------------------------------------------------------------------------------------------
def discover(
    *,
    rank: int = -1,
    world_size: int = -1,
    distributed_port: int = DEFAULT_PORT,
    auto_mpi_discovery: bool = True,
    environ: Mapping[str, str] | None = None,
) -> DistEnvironment:
    """Find this rank's place in the job from arguments and the environment (see the module doc).

    With no launcher at all, the result is a single-process world on 127.0.0.1, as DeepSpeed does
    for a script run directly with ``python train.py``.
    """
    environ = os.environ if environ is None else environ
    if (rank >= 0) != (world_size > 0):
        raise DistEnvironmentError(f"rank={rank} and world_size={world_size}: pass both, or neither")
    if rank >= 0:
        if rank >= world_size:
            raise DistEnvironmentError(f"rank={rank} is out of range for world_size={world_size}")
        master_port, port_src = _port(environ, distributed_port)
        local = environ.get("LOCAL_RANK")
        return DistEnvironment(
            rank=rank,
            world_size=world_size,
            local_rank=int(local) if local else 0,
            master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
            master_port=master_port,
            sources={
                "rank": "argument",
                "world_size": "argument",
                "local_rank": "LOCAL_RANK" if local else "default",
                "master_addr": "MASTER_ADDR" if environ.get("MASTER_ADDR") else "default",
                "master_port": port_src,
            },
            launcher="arguments",
        )
    sources = (
        lambda: _from_launcher(environ, distributed_port),
        lambda: _from_mpi(environ, distributed_port, auto_mpi_discovery),
        lambda: _from_slurm(environ, distributed_port),
    )
    for source in sources:  # lazily: a later source may import mpi4py, which starts MPI
        found = source()
        if found is not None:
            return found
    master_port, port_src = _port(environ, distributed_port)
    return DistEnvironment(
        rank=0,
        world_size=1,
        local_rank=0,
        master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
        master_port=master_port,
        local_world_size=1,
        sources={
            "rank": "default",
            "world_size": "default",
            "local_rank": "default",
            "master_addr": "MASTER_ADDR" if environ.get("MASTER_ADDR") else "default",
            "master_port": port_src,
        },
        launcher="single-process",
    )
