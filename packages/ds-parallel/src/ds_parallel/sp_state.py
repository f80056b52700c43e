"""The Ulysses ``mpu``: DeepSpeed's ``parallel_state_sp`` functions, answered from the current mesh.

``UlyssesSPAttentionHF.register_with_transformers`` returns this module; clients hand it to
``deepspeed.initialize(mpu=...)``, and the engine recognises it by ``initialize_sequence_parallel``.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from ds_parallel import mesh as _mesh


def initialize_sequence_parallel(sequence_parallel_size: int) -> None:
    """Build (and make current) a mesh whose sequence axis has ``sequence_parallel_size`` ranks."""
    if not dist.is_initialized():
        raise RuntimeError("initialize_sequence_parallel needs torch.distributed initialised first")
    if sequence_parallel_size < 1:
        raise ValueError(f"sequence_parallel_size must be a positive integer, got {sequence_parallel_size}")
    _mesh.current_or_build(sequence=sequence_parallel_size)


def _require() -> _mesh.ParallelMesh:
    mesh = _mesh.current()
    if mesh is None:
        raise RuntimeError(
            "sequence-parallel groups are not initialised: call initialize_sequence_parallel(n) "
            "or deepspeed.initialize with sequence_parallel_size first"
        )
    return mesh


def get_sequence_parallel_group() -> Any:
    """The sequence-parallel group of this rank."""
    return _require().group("sequence")


def get_sequence_data_parallel_group() -> Any:
    """The sequence+data group (ZeRO shards and gradients are averaged over it)."""
    return _require().group("sequence+data")


def get_sequence_parallel_world_size() -> int:
    """Ranks in a sequence-parallel group."""
    return _require().size("sequence")


def get_sequence_data_parallel_world_size() -> int:
    """Ranks in the sequence+data group."""
    return _require().size("sequence+data")


def get_sequence_parallel_rank() -> int:
    """This rank's index in its sequence-parallel group."""
    return _require().rank("sequence")


def get_sequence_data_parallel_rank() -> int:
    """This rank's index in the sequence+data group."""
    return _require().rank("sequence+data")
