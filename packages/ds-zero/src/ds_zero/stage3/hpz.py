"""One set of hpZ secondary groups for every shard unit (Note [hpZ] in :mod:`ds_zero.stage3.policy`).

Note: [one secondary mesh] ``fully_shard(reshard_after_forward=H)`` builds the post-forward mesh (the
groups of H consecutive ranks, and the groups across them) anew on every call, i.e. once per shard
unit: each unit then owns ``N / H + H`` new process groups (two per rank to join), which on NCCL means
two communicators per unit, created eagerly where the default group is bound to a device. DeepSpeed
creates its secondary groups once. Within :func:`shared_secondary_mesh` the post-forward mesh FSDP2
builds is reused for every unit sharded over the same mesh with the same H, so a model gets one set of
secondary groups whatever its number of units (the test counts them). If this torch names its helper
otherwise, nothing is patched and FSDP2 builds one mesh per unit, as it does by itself: same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ds_zero.stage3.mesh_release import release_at_teardown

_HELPER = "_get_post_forward_mesh_info"


@contextmanager
def shared_secondary_mesh() -> Iterator[None]:
    """While open, ``fully_shard`` calls with the same mesh and integer ``reshard_after_forward`` share
    one post-forward mesh (Note [one secondary mesh]). Every rank must shard the same units in order."""
    try:
        from torch.distributed.fsdp._fully_shard import _fully_shard as fsdp
    except ImportError:  # pragma: no cover - a torch without FSDP2's module layout
        yield
        return
    make = getattr(fsdp, _HELPER, None)
    if make is None:  # pragma: no cover - see the Note
        yield
        return
    built: dict[tuple[int, int], tuple[Any, Any]] = {}

    def shared(reshard_after_forward: Any, mesh_info: Any) -> Any:
        if (
            isinstance(reshard_after_forward, bool)
            or not isinstance(reshard_after_forward, int)
            or reshard_after_forward in (1, mesh_info.shard_mesh_size)
        ):  # no secondary mesh to build
            return make(reshard_after_forward, mesh_info)
        key = (id(mesh_info.mesh), reshard_after_forward)
        if key not in built:  # the mesh is kept with its result, so its id is not reused meanwhile
            built[key] = (mesh_info.mesh, make(reshard_after_forward, mesh_info))
            release_at_teardown(built[key][1].mesh)
        return built[key][1]

    setattr(fsdp, _HELPER, shared)
    try:
        yield
    finally:
        setattr(fsdp, _HELPER, make)
