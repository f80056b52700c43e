"""The one process mesh: every process group of a run (data, sequence, and their combination) comes from here.

``ParallelMesh.build(world_size=..., sequence=2)`` creates, collectively on every rank, one process group
per axis and per combination that users need (``"data"``, ``"sequence"``, ``"sequence+data"``, the group
ZeRO shards over). Groups are torch ``ProcessGroup`` objects made with ``new_subgroups_by_enumeration``
(a ``DeviceMesh`` holds the same groups, but flattening two of its axes into one group is private API,
and gloo needs nothing more). A group that spans the whole world is ``torch.distributed.group.WORLD``.

The mesh that is current (:func:`set_current`, :func:`current`) is what ``deepspeed.utils.groups`` and the
Ulysses ``mpu`` read; the engine makes one current when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from ds_parallel.layout import AXES, MeshError, MeshLayout, parse_axes

# The groups made eagerly; other combinations are made on first use by :meth:`ParallelMesh.group`
# (collectively: every rank must ask for them in the same order).
_EAGER: tuple[tuple[str, ...], ...] = (("data",), ("sequence",), ("data", "sequence"))


@dataclass
class ParallelMesh:
    """Process groups over the axes of a :class:`MeshLayout`, for this rank."""

    layout: MeshLayout
    global_rank: int
    _groups: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        *,
        world_size: int | None = None,
        sequence: int = 1,
        tensor: int = 1,
        pipeline: int = 1,
        expert: int = 1,
    ) -> ParallelMesh:
        """Build the mesh on every rank of the initialised default group (a collective call).

        Raises :class:`MeshError` before creating any group when the sizes do not divide the world."""
        if not dist.is_initialized():
            raise RuntimeError(
                "ParallelMesh.build needs torch.distributed initialised (deepspeed.init_distributed())"
            )
        actual = dist.get_world_size()
        if world_size is not None and world_size != actual:
            raise MeshError(f"world_size {world_size} given, but the process group has {actual} ranks")
        layout = MeshLayout.from_world(
            actual, sequence=sequence, tensor=tensor, pipeline=pipeline, expert=expert
        )
        mesh = cls(layout, dist.get_rank())
        for axes in _EAGER:
            mesh._make(axes)
        return mesh

    def _make(self, axes: tuple[str, ...]) -> Any:
        groups = self.layout.groups(axes)
        if len(groups) == 1:
            group = dist.group.WORLD  # the whole world: no new communicator
        else:
            group, _ = dist.new_subgroups_by_enumeration(groups)
        self._groups[axes] = group
        return group

    def group(self, axis: str | tuple[str, ...]) -> Any:
        """The process group of this rank over ``axis`` (``"sequence"``, ``"data"``, ``"sequence+data"``...)."""
        axes = parse_axes(axis)
        return self._groups[axes] if axes in self._groups else self._make(axes)

    def size(self, axis: str | tuple[str, ...]) -> int:
        """Number of ranks in a group over ``axis``."""
        axes = parse_axes(axis)
        n = 1
        for a in axes:
            n *= self.layout.sizes[a]
        return n

    def rank(self, axis: str | tuple[str, ...]) -> int:
        """This rank's index in its group over ``axis``."""
        return self.layout.rank_in(parse_axes(axis), self.global_rank)

    def ranks(self, axis: str | tuple[str, ...]) -> list[int]:
        """Global ranks of this rank's group over ``axis``."""
        return self.layout.group_of(parse_axes(axis), self.global_rank)

    @property
    def shard_axes(self) -> tuple[str, ...]:
        """The axes ZeRO shards over: data and sequence (DeepSpeed's ``sequence_data_parallel`` group)."""
        return ("data", "sequence")

    def describe(self) -> str:
        """One line for logs: the axis sizes and this rank's coordinates."""
        coords = self.layout.coords(self.global_rank)
        return " ".join(f"{a}={self.layout.sizes[a]}@{coords[a]}" for a in AXES)


_CURRENT: ParallelMesh | None = None


def set_current(mesh: ParallelMesh | None) -> None:
    """Make ``mesh`` the one ``deepspeed.utils.groups`` and the ``mpu`` read (``None`` clears it)."""
    global _CURRENT
    _CURRENT = mesh


def current() -> ParallelMesh | None:
    """The current mesh, or ``None`` before an engine or ``initialize_sequence_parallel`` built one."""
    if _CURRENT is not None and not dist.is_initialized():
        return None  # the process group it was built on is gone
    return _CURRENT


def current_or_build(*, sequence: int = 1) -> ParallelMesh:
    """The current mesh when it has this sequence size, otherwise a new one made current."""
    mesh = current()
    if mesh is None or mesh.size("sequence") != sequence:
        mesh = ParallelMesh.build(sequence=sequence)
        set_current(mesh)
    return mesh


__all__ = ["AXES", "MeshError", "MeshLayout", "ParallelMesh", "current", "current_or_build", "set_current"]
