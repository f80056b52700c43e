"""DeepSpeed's ``deepspeed.utils.groups`` getters, answered from the current mesh (or the world without one).

Without a mesh (no engine yet, no sequence parallelism) the world is one data-parallel group and the
sequence-parallel size is 1, as in DeepSpeed. ``mpu`` is the object a client passed to
``deepspeed.initialize`` (the engine sets it, as DeepSpeed's engine sets ``groups.mpu``); a
Megatron-style ``mpu`` answers the data-parallel questions itself.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from ds_parallel import mesh as _mesh

mpu: Any = None
"""The client's model-parallel unit, when one was passed to ``deepspeed.initialize``."""


def _foreign_mpu() -> Any:
    # The Ulysses mpu (our sp_state) reads the mesh itself; only a Megatron-style one answers differently.
    if mpu is not None and not hasattr(mpu, "initialize_sequence_parallel"):
        return mpu
    return None


def _group(axis: str) -> Any:
    mesh = _mesh.current()
    return mesh.group(axis) if mesh is not None else dist.group.WORLD


def _get_data_parallel_group() -> Any:
    """Data-parallel group (ranks holding different samples)."""
    foreign = _foreign_mpu()
    return foreign.get_data_parallel_group() if foreign is not None else _group("data")


def _get_data_parallel_world_size() -> int:
    """Ranks in the data-parallel group."""
    return dist.get_world_size(_get_data_parallel_group())


def _get_data_parallel_rank() -> int:
    """This rank's index in the data-parallel group."""
    return dist.get_rank(_get_data_parallel_group())


def _get_sequence_parallel_group() -> Any:
    """Sequence-parallel group; ``KeyError`` without sequence parallelism, as DeepSpeed."""
    mesh = _mesh.current()
    if mesh is None:
        raise KeyError("No sequence parallel group found")
    return mesh.group("sequence")


def _get_sequence_parallel_world_size() -> int:
    """Ranks in the sequence-parallel group (1 without sequence parallelism)."""
    mesh = _mesh.current()
    return mesh.size("sequence") if mesh is not None else 1


def _get_sequence_parallel_rank() -> int:
    """This rank's index in the sequence-parallel group (0 without sequence parallelism)."""
    mesh = _mesh.current()
    return mesh.rank("sequence") if mesh is not None else 0


def _get_sequence_data_parallel_group() -> Any:
    """The group ZeRO shards over and gradients are averaged over: sequence and data together."""
    foreign = _foreign_mpu()
    return foreign.get_data_parallel_group() if foreign is not None else _group("sequence+data")


def _get_sequence_data_parallel_world_size() -> int:
    """Ranks in the sequence+data group."""
    return dist.get_world_size(_get_sequence_data_parallel_group())


def _get_sequence_data_parallel_rank() -> int:
    """This rank's index in the sequence+data group."""
    return dist.get_rank(_get_sequence_data_parallel_group())


def _get_model_parallel_world_size() -> int:
    """Model (tensor) parallel size: 1 until tensor parallelism is built."""
    foreign = _foreign_mpu()
    return foreign.get_model_parallel_world_size() if foreign is not None else 1


def _get_broadcast_src_rank() -> int:
    """Global rank that broadcasts the initial weights: the first of the sequence+data group."""
    return dist.get_global_rank(_get_sequence_data_parallel_group(), 0)


def get_data_parallel_group() -> Any:
    """Megatron-style name for :func:`_get_data_parallel_group`."""
    return _get_data_parallel_group()


def get_data_parallel_world_size() -> int:
    """Megatron-style name for :func:`_get_data_parallel_world_size`."""
    return _get_data_parallel_world_size()


def get_data_parallel_rank() -> int:
    """Megatron-style name for :func:`_get_data_parallel_rank`."""
    return _get_data_parallel_rank()


def get_model_parallel_world_size() -> int:
    """Megatron-style name: 1 until tensor parallelism is built."""
    return _get_model_parallel_world_size()


def get_model_parallel_rank() -> int:
    """0 until tensor parallelism is built."""
    return 0


# Expert-parallel groups (MoE) are named per ep size and kept in ds_parallel.moe.expert_groups; DeepSpeed's
# getters for them (_get_expert_parallel_group, _create_expert_and_data_parallel, ...) are re-exported here.
from ds_parallel.moe import expert_groups as _expert_groups  # noqa: E402

globals().update(
    {n: getattr(_expert_groups, n) for n in _expert_groups.__all__ if n.startswith(("_get_", "_create_"))}
)

__all__ = [name for name in dir() if name.startswith(("_get_", "get_", "_create_"))] + ["mpu"]
