"""ds_parallel: one process mesh and the parallelism built on it (sequence parallelism so far).

``ParallelMesh`` (:mod:`ds_parallel.mesh`) is the single source of process groups; :mod:`ds_parallel.groups`
answers DeepSpeed's ``deepspeed.utils.groups`` questions from it; :mod:`ds_parallel.ulysses` holds
Ulysses sequence parallelism.
"""

from ds_parallel._version import __version__
from ds_parallel.layout import AXES, MeshError, MeshLayout
from ds_parallel.mesh import ParallelMesh, current, current_or_build, set_current

__all__ = [
    "AXES",
    "MeshError",
    "MeshLayout",
    "ParallelMesh",
    "__version__",
    "current",
    "current_or_build",
    "set_current",
]
