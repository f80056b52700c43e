"""Rank layout of the process mesh, as plain arithmetic (no process group): which ranks share a group.

Note: [axis order] Axes run outermost to innermost ``pipeline, data, sequence, tensor``: consecutive ranks
differ first in their tensor coordinate, then in their sequence coordinate. With tensor = 1 this makes
the sequence-parallel groups blocks of consecutive ranks (``[0, sp)``, ``[sp, 2 sp)``, ...) and the
data-parallel groups strides of ``sp``, which is DeepSpeed's Ulysses layout (ranks that exchange
activations every layer sit next to each other, on one node where possible). Expert parallelism
subdivides the data axis in DeepSpeed, so it is not an axis of the product; it is refused above 1 until
it is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

AXES: tuple[str, ...] = ("pipeline", "data", "sequence", "tensor")
"""Mesh axes, outermost first (Note [axis order])."""


class MeshError(ValueError):
    """A mesh that cannot be built: sizes that do not divide the world, an unknown axis."""


def parse_axes(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"sequence+data"`` or ``("sequence", "data")`` -> the axes in mesh order, checked."""
    names = tuple(spec.split("+")) if isinstance(spec, str) else tuple(spec)
    unknown = [n for n in names if n not in AXES]
    if unknown or not names:
        raise MeshError(
            f"unknown mesh axis {unknown or spec!r}; the axes are {', '.join(AXES)} (join with '+')"
        )
    return tuple(a for a in AXES if a in names)


@dataclass(frozen=True)
class MeshLayout:
    """Sizes of every axis; ``world_size`` is their product."""

    sizes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_world(
        cls, world_size: int, *, sequence: int = 1, tensor: int = 1, pipeline: int = 1, expert: int = 1
    ) -> MeshLayout:
        """The layout for ``world_size`` ranks; the data axis takes what the other axes leave."""
        for name, value in (
            ("sequence", sequence),
            ("tensor", tensor),
            ("pipeline", pipeline),
            ("expert", expert),
        ):
            if not isinstance(value, int) or value < 1:
                raise MeshError(f"{name} parallel size must be a positive integer, got {value!r}")
        if expert != 1:
            raise MeshError("expert parallelism (expert > 1) is not built on the mesh yet")
        model = sequence * tensor * pipeline
        if world_size < 1 or world_size % model:
            raise MeshError(
                f"world size {world_size} is not divisible by sequence_parallel_size {sequence} x tensor {tensor} "
                f"x pipeline {pipeline} = {model}; launch a multiple of {model} ranks or change the sizes"
            )
        return cls(
            {"pipeline": pipeline, "data": world_size // model, "sequence": sequence, "tensor": tensor}
        )

    @property
    def world_size(self) -> int:
        """Number of ranks in the mesh."""
        return math.prod(self.sizes[a] for a in AXES)

    def coords(self, rank: int) -> dict[str, int]:
        """This rank's coordinate on every axis (innermost axis varies fastest)."""
        if not 0 <= rank < self.world_size:
            raise MeshError(f"rank {rank} is outside a mesh of {self.world_size} ranks")
        out: dict[str, int] = {}
        for axis in reversed(AXES):
            rank, out[axis] = divmod(rank, self.sizes[axis])
        return {a: out[a] for a in AXES}

    def rank_of(self, coords: dict[str, int]) -> int:
        """Inverse of :meth:`coords`."""
        rank = 0
        for axis in AXES:
            rank = rank * self.sizes[axis] + coords[axis]
        return rank

    def groups(self, axes: tuple[str, ...]) -> list[list[int]]:
        """Every group over ``axes``: ranks that agree on all other axes, each list ascending.

        Groups are listed in ascending order of their first rank, so every rank enumerates them alike
        (process-group creation is collective and must happen in the same order everywhere)."""
        seen: dict[tuple[int, ...], list[int]] = {}
        for rank in range(self.world_size):
            c = self.coords(rank)
            key = tuple(c[a] for a in AXES if a not in axes)
            seen.setdefault(key, []).append(rank)
        return sorted(seen.values(), key=lambda g: g[0])

    def group_of(self, axes: tuple[str, ...], rank: int) -> list[int]:
        """The ranks of ``rank``'s group over ``axes``."""
        return next(g for g in self.groups(axes) if rank in g)

    def rank_in(self, axes: tuple[str, ...], rank: int) -> int:
        """``rank``'s index inside its group over ``axes``."""
        return self.group_of(axes, rank).index(rank)
