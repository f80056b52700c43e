"""ds_comm: process-group initialisation, environment discovery, and logged collectives.

``deepspeed.comm`` is this module: the collectives keep torch.distributed's signatures.
"""

from ds_comm import comms_log
from ds_comm._version import __version__
from ds_comm.collectives import *  # noqa: F403 - the collective API is this package's surface
from ds_comm.collectives import __all__ as _collectives_all
from ds_comm.env import DistEnvironment, DistEnvironmentError, discover
from ds_comm.init import DEFAULT_TIMEOUT, at_teardown, init_distributed, last_discovery
from ds_comm.logging_api import configure, log_summary
from ds_comm.mpi import mpi_discovery
from ds_comm.torch_backend import TorchBackend

__all__ = [
    *_collectives_all,
    "DEFAULT_TIMEOUT",
    "DistEnvironment",
    "DistEnvironmentError",
    "TorchBackend",
    "at_teardown",
    "__version__",
    "comms_log",
    "configure",
    "discover",
    "init_distributed",
    "last_discovery",
    "log_summary",
    "mpi_discovery",
]
