"""DeepSpeed's pipeline topologies (``deepspeed.runtime.pipe.topology``): named axes over ranks, and the grid.

Note: [pipe rank order] Axes are listed outermost first and the last axis varies fastest, as in DeepSpeed:
``PipeDataParallelTopology`` is ``('pipe', 'data')`` (the data-parallel replicas of a stage are
consecutive ranks) and ``PipeModelDataParallelTopology`` is ``('pipe', 'data', 'model')``. That is the
order of the process mesh (``ds_parallel.layout``: pipeline, data, sequence, tensor), so the grid's groups
come from the one mesh.
"""

from __future__ import annotations

import itertools
from collections import namedtuple
from typing import Any

import torch.distributed as dist

from ds_parallel.layout import MeshError
from ds_parallel.mesh import ParallelMesh


def _coord_type(axes: list[str]) -> Any:
    """``ProcessCoord``: a named tuple type with one field per axis, made at run time (so typed Any)."""
    return namedtuple("ProcessCoord", axes)


class ProcessTopology:
    """Ranks laid out on a Cartesian grid of named axes (last axis fastest)."""

    def __init__(self, axes: list[str], dims: list[int]) -> None:
        if len(axes) != len(dims) or len(set(axes)) != len(axes):
            raise ValueError(f"ProcessTopology needs distinct axes and one size each, got {axes} / {dims}")
        self.axes = list(axes)
        self.dims = list(dims)
        self.ProcessCoord = _coord_type(self.axes)
        self.mapping: dict[Any, int] = {}
        for rank, coord in enumerate(itertools.product(*[range(d) for d in self.dims])):
            self.mapping[self.ProcessCoord(*coord)] = rank

    def get_rank(self, **coord_kwargs: int) -> int:
        """The rank at the full coordinate given by keyword (every axis)."""
        if len(coord_kwargs) != len(self.axes):
            raise ValueError("get_rank() needs a coordinate on every axis")
        key = self.ProcessCoord(**coord_kwargs)
        if key not in self.mapping:
            raise ValueError(
                f"coordinate {coord_kwargs} is outside the topology {dict(zip(self.axes, self.dims))}"
            )
        return self.mapping[key]

    def get_axis_names(self) -> list[str]:
        """The axis names, outermost first."""
        return self.axes

    def get_rank_repr(
        self,
        rank: int,
        omit_axes: list[str] | tuple[str, ...] = ("data", "pipe"),
        inner_sep: str = "_",
        outer_sep: str = "-",
    ) -> str:
        """``axis_NN`` parts of ``rank``'s coordinate, leaving out ``omit_axes`` (checkpoint names)."""
        coord = self.get_coord(rank)
        return outer_sep.join(
            f"{ax}{inner_sep}{getattr(coord, ax):02d}" for ax in self.axes if ax not in omit_axes
        )

    def get_dim(self, axis: str) -> int:
        """Size of ``axis`` (0 when the topology has no such axis)."""
        return self.dims[self.axes.index(axis)] if axis in self.axes else 0

    def get_coord(self, rank: int) -> Any:
        """The coordinate (a namedtuple) of ``rank``."""
        for coord, r in self.mapping.items():
            if r == rank:
                return coord
        raise ValueError(f"rank {rank} not found in topology")

    def get_axis_comm_lists(self, axis: str) -> list[list[int]]:
        """Every group of ranks that differ only along ``axis``."""
        if axis not in self.axes:
            return []
        others = [a for a in self.axes if a != axis]
        lists = []
        for ccoord in itertools.product(*[range(self.get_dim(a)) for a in others]):
            fixed = dict(zip(others, ccoord))
            lists.append([self.get_rank(**fixed, **{axis: i}) for i in range(self.get_dim(axis))])
        return lists

    def filter_match(self, **filter_kwargs: int) -> list[int]:
        """Ranks whose coordinate matches every given axis value, ascending."""
        return sorted(
            r for c, r in self.mapping.items() if all(getattr(c, k) == v for k, v in filter_kwargs.items())
        )

    def get_axis_list(self, axis: str, idx: int) -> list[int]:
        """Ranks whose coordinate on ``axis`` is ``idx``."""
        if axis not in self.axes:
            return []
        i = self.axes.index(axis)
        return sorted(r for c, r in self.mapping.items() if c[i] == idx)

    def world_size(self) -> int:
        """Number of ranks."""
        return len(self.mapping)

    def __str__(self) -> str:
        return str(self.mapping)


class PipeDataParallelTopology(ProcessTopology):
    """Pipeline x data parallelism: ``('pipe', 'data')`` (Note [pipe rank order])."""

    def __init__(self, num_pp: int, num_dp: int) -> None:
        super().__init__(axes=["pipe", "data"], dims=[num_pp, num_dp])


class PipeModelDataParallelTopology(ProcessTopology):
    """Pipeline x data x model (tensor) parallelism: ``('pipe', 'data', 'model')``."""

    def __init__(self, num_pp: int, num_mp: int, num_dp: int) -> None:
        super().__init__(axes=["pipe", "data", "model"], dims=[num_pp, num_dp, num_mp])


class PipelineParallelGrid:
    """DeepSpeed's grid (the ``mpu`` a pipeline engine uses): this rank's stage, replica and groups.

    The groups are the process mesh's (``ParallelMesh.build(pipeline=..., tensor=...)``)."""

    def __init__(self, topology: ProcessTopology | None = None, process_group: Any = None) -> None:
        self.global_rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        if topology is None:
            topology = PipeDataParallelTopology(num_pp=1, num_dp=self.world_size)
        if topology.world_size() != self.world_size:
            raise MeshError(
                f"the pipeline topology holds {topology.world_size()} ranks, the world {self.world_size}"
            )
        self._topo = topology
        pp, mp = max(topology.get_dim("pipe"), 1), max(topology.get_dim("model"), 1)
        self.mesh = ParallelMesh.build(pipeline=pp, tensor=mp)
        self.pipe_parallel_size = pp
        self.model_parallel_size = mp
        self.data_parallel_size = max(topology.get_dim("data"), 1)
        coord = topology.get_coord(self.global_rank)
        self.stage_id = coord.pipe
        self.data_parallel_id = coord.data
        self.is_first_stage = self.stage_id == 0
        self.is_last_stage = self.stage_id == pp - 1
        self.pp_group = self.mesh.ranks("pipeline")
        self.dp_group = self.mesh.ranks("data")
        self.slice_group = self.mesh.ranks("tensor")

    def get_stage_id(self) -> int:
        """This rank's pipeline stage."""
        return self.stage_id

    def get_data_parallel_id(self) -> int:
        """This rank's data-parallel replica index."""
        return self.data_parallel_id

    def stage_to_global(self, stage_id: int, **kwargs: int) -> int:
        """The global rank of ``stage_id`` in this rank's pipeline (same data and model coordinates)."""
        coord = self._topo.get_coord(self.global_rank)._replace(pipe=stage_id, **kwargs)
        return self._topo.get_rank(**coord._asdict())

    def topology(self) -> ProcessTopology:
        """The topology this grid was built from."""
        return self._topo

    def get_global_rank(self) -> int:
        """This rank in the world."""
        return self.global_rank

    def get_pipe_parallel_rank(self) -> int:
        """This rank's stage."""
        return self.stage_id

    def get_pipe_parallel_world_size(self) -> int:
        """Number of stages."""
        return self.pipe_parallel_size

    def get_pipe_parallel_group(self) -> Any:
        """The group of this rank's pipeline (one rank per stage)."""
        return self.mesh.group("pipeline")

    def get_data_parallel_rank(self) -> int:
        """This rank in its data-parallel group."""
        return self.data_parallel_id

    def get_data_parallel_world_size(self) -> int:
        """Number of data-parallel replicas."""
        return self.data_parallel_size

    def get_data_parallel_group(self) -> Any:
        """The group of this stage's data-parallel replicas."""
        return self.mesh.group("data")

    # DeepSpeed's "model parallel" of a grid is every kind of model parallelism together: the ranks of
    # one pipeline and its tensor slices (pipeline x tensor); Megatron's tensor slicing is "slice".
    def get_model_parallel_rank(self) -> int:
        """This rank in its pipeline x tensor group."""
        return self.mesh.rank("pipeline+tensor")

    def get_model_parallel_world_size(self) -> int:
        """Stages x tensor-parallel size."""
        return self.pipe_parallel_size * self.model_parallel_size

    def get_model_parallel_group(self) -> Any:
        """The pipeline x tensor group."""
        return self.mesh.group("pipeline+tensor")

    def get_slice_parallel_rank(self) -> int:
        """This rank in its tensor (Megatron slice) group."""
        return self.mesh.rank("tensor")

    def get_slice_parallel_world_size(self) -> int:
        """Tensor (slice) parallel size."""
        return self.model_parallel_size

    def get_slice_parallel_group(self) -> Any:
        """The tensor (slice) parallel group."""
        return self.mesh.group("tensor")

    get_tensor_model_parallel_rank = get_slice_parallel_rank
    get_tensor_model_parallel_world_size = get_slice_parallel_world_size
    get_tensor_model_parallel_group = get_slice_parallel_group
    get_pipeline_model_parallel_rank = get_pipe_parallel_rank
    get_pipeline_model_parallel_world_size = get_pipe_parallel_world_size

    def get_data_parallel_group_ranks(self) -> list[int]:
        """Global ranks of this stage's data-parallel group."""
        return self.dp_group
