"""The engine's process groups, from the one mesh (``ds_parallel``) or from a client's Megatron-style ``mpu``.

Note: [sp groups] With ``sequence_parallel_size`` = sp (from the config, or from the Ulysses ``mpu`` that
``UlyssesSPAttentionHF.register_with_transformers`` returns) the world of ``W`` ranks is a mesh of
``W / sp`` data-parallel x ``sp`` sequence-parallel ranks. ZeRO shards over, and averages gradients over,
the sequence+data group (all ``sp * dp`` ranks), as DeepSpeed does; with the sequence-parallel loss of
Note [sp loss] that average equals the run without sequence parallelism. (At stage 0 DeepSpeed divides by
the data-parallel size only, which with that loss gives sp times the gradient; here every stage averages
over the same group, so switching stages changes nothing.) Batch sizes are reconciled
with the data-parallel size ``W / sp`` (ranks of one sequence-parallel group share their samples).

Engine attributes (DeepSpeed's names): ``dp_world_size`` (data axis), ``seq_dp_world_size`` and
``seq_data_parallel_group`` (the shard group), ``sequence_parallel_size``, ``seq_parallel_group``;
``dp_group`` stays the group ZeRO, the initial broadcast and the checkpoint shards use (``None``: the world).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

import ds_comm
from ds_engine.config import DeepSpeedConfigError
from ds_parallel import MeshError, ParallelMesh, current, set_current
from ds_parallel import groups as ds_groups


@dataclass(frozen=True)
class Topology:
    """The groups and sizes one engine uses (Note [sp groups])."""

    mesh: ParallelMesh | None
    shard_group: Any  # None: the whole world
    dp_world_size: int
    dp_rank: int
    seq_dp_world_size: int
    sequence_parallel_size: int
    seq_parallel_group: Any
    tensor_parallel_size: int = 1  # AutoTP (tensor_parallel.autotp_size); its group is the mesh's "tensor"
    tensor_parallel_group: Any = None


def _sp_from_mpu(mpu: Any) -> int:
    if mpu is not None and hasattr(mpu, "get_sequence_parallel_world_size"):
        return int(mpu.get_sequence_parallel_world_size())
    return 1


def sequence_parallel_size_of(raw_config: Any) -> int:
    """``sequence_parallel_size`` of a raw config dict (1 when absent or unreadable; validation reports it)."""
    if isinstance(raw_config, dict):
        value = raw_config.get("sequence_parallel_size", 1)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return 1


def tensor_parallel_size_of(raw_config: Any) -> int:
    """``tensor_parallel.autotp_size`` of a raw config dict (1 when absent, 0 or unreadable)."""
    section = raw_config.get("tensor_parallel") if isinstance(raw_config, dict) else None
    value = section.get("autotp_size", 0) if isinstance(section, dict) else 0
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def build_topology(mpu: Any, config_sp: int, config_tp: int = 1) -> Topology:
    """The engine's groups; builds (collectively) and makes current the mesh when sp > 1 or tp > 1.

    With AutoTP (tp > 1) the mesh's tensor axis holds the tensor-parallel groups (consecutive ranks, as
    Accelerate's data loader assumes); ZeRO shards and averages over sequence+data, the ranks that differ
    in everything but their tensor coordinate, so the data-parallel size is world / (sp * tp)."""
    ds_groups.mpu = mpu
    mpu_sp = _sp_from_mpu(mpu)
    if config_sp > 1 and mpu_sp > 1 and config_sp != mpu_sp:
        raise DeepSpeedConfigError(
            f"'sequence_parallel_size' {config_sp} differs from the mpu's sequence-parallel size {mpu_sp}"
        )
    sp = max(config_sp, mpu_sp)
    if mpu is not None and mpu_sp == 1:
        if config_tp > 1:
            raise DeepSpeedConfigError(
                "'tensor_parallel.autotp_size' > 1 with an mpu: AutoTP builds its own "
                "tensor-parallel groups; do not pass mpu"
            )
        return _from_megatron_mpu(mpu)
    if sp == 1 and config_tp == 1:
        # A mesh built before (a sequence-parallel model's engine) stays current, as DeepSpeed's global
        # groups do: a second engine without sp (TRL's reference model) must not take the sequence
        # groups away from the loss code that reads them. This engine itself runs on the world.
        world = ds_comm.get_world_size()
        return Topology(None, None, world, ds_comm.get_rank(), world, 1, None)
    mesh = current()
    if mesh is None or mesh.size("sequence") != sp or mesh.size("tensor") != config_tp:
        try:
            mesh = ParallelMesh.build(sequence=sp, tensor=config_tp)
        except MeshError as exc:
            key = "'tensor_parallel.autotp_size'" if config_tp > 1 else "'sequence_parallel_size'"
            raise DeepSpeedConfigError(f"{key} {config_tp if config_tp > 1 else sp}: {exc}") from None
        set_current(mesh)
    shard = mesh.group("sequence+data")
    return Topology(
        mesh,
        None if shard is dist.group.WORLD else shard,
        mesh.size("data"),
        mesh.rank("data"),
        mesh.size("sequence+data"),
        sp,
        mesh.group("sequence"),
        config_tp,
        mesh.group("tensor") if config_tp > 1 else None,
    )


def _from_megatron_mpu(mpu: Any) -> Topology:
    if mpu.get_model_parallel_world_size() != 1:
        raise NotImplementedError("model parallelism (mpu with model-parallel size > 1) is not supported yet")
    group = mpu.get_data_parallel_group()
    size = ds_comm.get_world_size(group)
    return Topology(None, group, size, ds_comm.get_rank(group), size, 1, None)
