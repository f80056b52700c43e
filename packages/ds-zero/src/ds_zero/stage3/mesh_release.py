"""Device meshes let go of their process groups at exit (Note [exit teardown] in :mod:`ds_comm.init`).

A ``DeviceMesh`` keeps every group it spans in its ``_pg_registry``, and the mesh lives as long as the
model FSDP2 sharded over it, which for a DeepSpeed script is until interpreter exit. A group still
referenced after ``destroy_process_group`` keeps its gloo worker threads, and finalisation can kill one
mid-destructor: the rank ends in SIGABRT (exit 134) after a finished run. So each mesh stage 3 builds
empties that registry just before the groups are destroyed. Nothing runs collectives after that point.
"""

from __future__ import annotations

import weakref
from typing import Any

import ds_comm


def release_at_teardown(mesh: Any) -> None:
    """Drop ``mesh``'s references to its process groups at interpreter exit (if the mesh is still alive)."""
    ref = weakref.ref(mesh)

    def release() -> None:
        alive = ref()
        registry = getattr(alive, "_pg_registry", None)  # torch >= 2.10 keeps the groups here
        if isinstance(registry, dict):
            registry.clear()

    ds_comm.at_teardown(release)


__all__ = ["release_at_teardown"]
