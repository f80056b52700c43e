"""Expert-parallel and expert-data-parallel process groups, by name (``"ep_size_<N>"``), as DeepSpeed keeps them.

Note: [expert layout] With ``E`` = expert-parallel size on a data-parallel world of ``W`` ranks
(DeepSpeed's default "E + D" order): expert-parallel groups are consecutive blocks ``[0, E)``, ``[E, 2E)``...
(tokens are exchanged by all-to-all inside one), and expert-data-parallel groups are strides
``{i, i + E, i + 2E, ...}`` (ranks holding the same experts, whose gradients are summed).
``use_data_before_expert_parallel_`` swaps the two (blocks of ``W / E`` hold the same experts).
Several sizes may coexist (one MoE layer at ep 2, another at ep 4); each is built once, collectively.

These groups subdivide the data axis of the mesh, which is how DeepSpeed defines them; they are kept
here rather than as an axis of :class:`ds_parallel.MeshLayout` because one model may use several sizes.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

_EXPERT_PARALLEL_GROUP: dict[str, Any] = {}
_EXPERT_PARALLEL_GROUP_RANKS: dict[str, list[int]] = {}
_EXPERT_DATA_PARALLEL_GROUP: dict[str, Any] = {}
_EXPERT_DATA_PARALLEL_GROUP_RANKS: dict[str, list[int]] = {}


def group_name(ep_size: int) -> str:
    """DeepSpeed's name for the groups of expert-parallel size ``ep_size``."""
    return f"ep_size_{ep_size}"


def expert_rank_lists(
    world_size: int, ep_size: int, use_data_before_expert_parallel_: bool = False
) -> tuple[list[list[int]], list[list[int]]]:
    """(expert-parallel groups, expert-data-parallel groups) as rank lists (Note [expert layout])."""
    if ep_size < 1 or world_size % ep_size:
        raise ValueError(
            f"expert parallel size {ep_size} must divide the data-parallel world size {world_size}"
        )
    edp = world_size // ep_size
    if use_data_before_expert_parallel_:
        ep_groups = [list(range(i, world_size, edp)) for i in range(edp)]
        edp_groups = [list(range(i * edp, (i + 1) * edp)) for i in range(ep_size)]
    else:
        ep_groups = [list(range(i * ep_size, (i + 1) * ep_size)) for i in range(edp)]
        edp_groups = [list(range(i, world_size, ep_size)) for i in range(ep_size)]
    return ep_groups, edp_groups


def _new_group(ranks: list[int], world_size: int) -> Any:
    return dist.group.WORLD if len(ranks) == world_size else dist.new_group(ranks)


def _create_expert_and_data_parallel(
    expert_parallel_size_: int,
    mp_size: int | None = None,
    pp_size: int | None = None,
    mp_mode: str = "tp",
    use_data_before_expert_parallel_: bool = False,
    folding_spec: Any = None,
) -> None:
    """Create (collectively, once per size) the expert and expert-data-parallel groups of this size."""
    if (mp_size or 1) > 1 or (pp_size or 1) > 1 or folding_spec is not None:
        raise NotImplementedError("expert parallelism with tensor or pipeline parallelism is not built yet")
    if not dist.is_initialized():
        raise RuntimeError(
            "expert parallel groups need torch.distributed initialised (deepspeed.init_distributed())"
        )
    name = group_name(expert_parallel_size_)
    if name in _EXPERT_PARALLEL_GROUP:
        return
    world, rank = dist.get_world_size(), dist.get_rank()
    ep_groups, edp_groups = expert_rank_lists(world, expert_parallel_size_, use_data_before_expert_parallel_)
    # new_group is collective: every rank creates every group, in the same order.
    for ranks in edp_groups:
        group = _new_group(ranks, world)
        if rank in ranks:
            _EXPERT_DATA_PARALLEL_GROUP[name], _EXPERT_DATA_PARALLEL_GROUP_RANKS[name] = group, ranks
    for ranks in ep_groups:
        group = _new_group(ranks, world)
        if rank in ranks:
            _EXPERT_PARALLEL_GROUP[name], _EXPERT_PARALLEL_GROUP_RANKS[name] = group, ranks


def _clear() -> None:
    """Forget every expert group (a new process group was initialised)."""
    for d in (
        _EXPERT_PARALLEL_GROUP,
        _EXPERT_PARALLEL_GROUP_RANKS,
        _EXPERT_DATA_PARALLEL_GROUP,
        _EXPERT_DATA_PARALLEL_GROUP_RANKS,
    ):
        d.clear()


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise KeyError(
            f"{what} group '{name}' has not been created (an MoE layer with that ep_size makes it when "
            "deepspeed.initialize sees it)"
        )
    return table[name]


def _get_expert_parallel_group(group_name: str) -> Any:
    """The expert-parallel group named ``group_name`` (tokens are exchanged inside it)."""
    return _lookup(_EXPERT_PARALLEL_GROUP, group_name, "expert parallel")


def _get_expert_parallel_group_ranks(group_name: str) -> list[int]:
    """Global ranks of this rank's expert-parallel group."""
    return _lookup(_EXPERT_PARALLEL_GROUP_RANKS, group_name, "expert parallel")


def _get_expert_parallel_group_dict() -> dict[str, Any]:
    """Every expert-parallel group this rank belongs to, by name."""
    return _EXPERT_PARALLEL_GROUP


def _get_expert_data_parallel_group(group_name: str) -> Any:
    """The expert-data-parallel group named ``group_name`` (expert gradients are summed inside it)."""
    return _lookup(_EXPERT_DATA_PARALLEL_GROUP, group_name, "expert data parallel")


def _get_expert_data_parallel_group_ranks(group_name: str) -> list[int]:
    """Global ranks of this rank's expert-data-parallel group."""
    return _lookup(_EXPERT_DATA_PARALLEL_GROUP_RANKS, group_name, "expert data parallel")


def _get_expert_data_parallel_group_dict() -> dict[str, Any]:
    """Every expert-data-parallel group this rank belongs to, by name."""
    return _EXPERT_DATA_PARALLEL_GROUP


def _get_expert_parallel_world_size(group_name: str) -> int:
    """Ranks in the expert-parallel group ``group_name``."""
    return len(_get_expert_parallel_group_ranks(group_name))


def _get_expert_parallel_rank(group_name: str) -> int:
    """This rank's index in the expert-parallel group ``group_name``."""
    return _get_expert_parallel_group_ranks(group_name).index(dist.get_rank())


def _get_expert_parallel_src_rank(group_name: str) -> int:
    """First global rank of this rank's expert-parallel group."""
    return _get_expert_parallel_group_ranks(group_name)[0]


def _get_expert_data_parallel_world_size(group_name: str) -> int:
    """Ranks in the expert-data-parallel group ``group_name``."""
    return len(_get_expert_data_parallel_group_ranks(group_name))


def _get_expert_data_parallel_rank(group_name: str) -> int:
    """This rank's index in the expert-data-parallel group ``group_name``."""
    return _get_expert_data_parallel_group_ranks(group_name).index(dist.get_rank())


def _get_expert_broadcast_src_rank(group_name: str) -> int:
    """Global rank that broadcasts initial expert weights inside the expert-data-parallel group."""
    return _get_expert_data_parallel_group_ranks(group_name)[0]


def _get_max_expert_size() -> int | None:
    """The largest expert-parallel size created, or None."""
    sizes = [int(n.rsplit("_", 1)[1]) for n in _EXPERT_PARALLEL_GROUP]
    return max(sizes) if sizes else None


def _get_max_expert_size_name() -> str:
    """Name of the groups of the largest expert-parallel size."""
    return group_name(_get_max_expert_size() or 1)


def _get_max_expert_parallel_group() -> Any:
    """Expert-parallel group of the largest size."""
    return _get_expert_parallel_group(_get_max_expert_size_name())


def _get_expert_model_parallel_world_size() -> int:
    """Tensor parallelism inside experts: 1 (not built)."""
    return 1


__all__ = [n for n in dir() if n.startswith("_get_")] + [
    "_create_expert_and_data_parallel",
    "expert_rank_lists",
    "group_name",
]
