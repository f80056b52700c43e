"""Multi-node runners behind a name registry: ``get_runner("pdsh")`` and friends."""

from ds_launch.runners import mpi, pdsh, slurm  # noqa: F401  (registers the runners)
from ds_launch.runners.base import RUNNERS, MultiNodeJob, MultiNodeRunner, get_runner, register_runner

__all__ = ["RUNNERS", "MultiNodeJob", "MultiNodeRunner", "get_runner", "register_runner"]
