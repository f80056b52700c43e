"""``deepspeed.tp_model_init`` and the state the engine reads back from it.

DeepSpeed 0.19 records the arguments and splits the model inside ``deepspeed.initialize``. Here the split
happens at once (the process mesh with its tensor axis is built then, collectively), because the HF Trainer
builds its optimizer from ``model.parameters()`` between the two calls; splitting keeps every ``Parameter``
object (layers.py), so either order gives the same tensors. ``deepspeed.initialize`` then finds the model
already split (``model.ds_autotp_size``) and only checks that the config agrees.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ds_parallel.layout import MeshError
from ds_parallel.mesh import ParallelMesh, current, set_current
from ds_parallel.tensor.autotp import partition_model
from ds_parallel.tensor.layers import PartitionError

TP_SIZE_ATTR = "ds_autotp_size"


def tensor_mesh(tp_size: int, *, sequence: int = 1) -> ParallelMesh:
    """The current mesh when its tensor (and sequence) sizes match, otherwise a new one made current."""
    mesh = current()
    if mesh is None or mesh.size("tensor") != tp_size or mesh.size("sequence") != sequence:
        mesh = ParallelMesh.build(sequence=sequence, tensor=tp_size)
        set_current(mesh)
    return mesh


def tensor_section(config: Any) -> dict[str, Any]:
    """The ``tensor_parallel`` section of a config dict or JSON path (empty when absent)."""
    if isinstance(config, str):
        import json

        with open(config, encoding="utf-8") as fh:
            config = json.load(fh)
    section = config.get("tensor_parallel", {}) if isinstance(config, dict) else {}
    return section if isinstance(section, dict) else {}


def apply_autotp(
    model: nn.Module, tp_size: int, partition_config: dict[str, Any] | None = None, tp_group: Any = None
) -> nn.Module:
    """Split ``model`` over the mesh's tensor axis (or ``tp_group``) once; a second call with the same size
    is a no-op, another size an error."""
    done = getattr(model, TP_SIZE_ATTR, 1)
    if done == tp_size or tp_size <= 1:
        return model
    if done > 1:
        raise PartitionError(
            f"the model is already split for tensor parallelism {done}; it cannot be split again "
            f"for {tp_size}"
        )
    if not dist.is_initialized():
        import ds_comm

        ds_comm.init_distributed(verbose=False)
    if tp_group is None:
        try:
            tp_group = tensor_mesh(tp_size).group("tensor")
        except MeshError as exc:
            raise PartitionError(f"'tensor_parallel.autotp_size' {tp_size}: {exc}") from None
    partition_model(model, tp_group, tp_size, partition_config)
    setattr(model, TP_SIZE_ATTR, tp_size)
    return model


def tp_model_init(
    model: nn.Module, tp_size: int, dtype: torch.dtype, config: Any = None, **kwargs: Any
) -> nn.Module:
    """DeepSpeed's ``deepspeed.tp_model_init``: split ``model`` for ``tp_size``-way tensor parallelism.

    ``config`` (dict or path) may carry ``tensor_parallel.partition_config``; its ``autotp_size`` must equal
    ``tp_size``. ``dtype`` is recorded, not applied: the engine casts per its fp16/bf16 sections after
    taking fp32 master copies. ``tp_group`` (keyword) uses a client's group instead of the mesh's."""
    section = tensor_section(config) if config is not None else {}
    cfg_size = section.get("autotp_size", 0)
    if isinstance(cfg_size, int) and cfg_size > 1 and cfg_size != tp_size:
        raise PartitionError(
            f"tp_model_init(tp_size={tp_size}) disagrees with the config's "
            f"tensor_parallel.autotp_size {cfg_size}"
        )
    # nn.Module.__setattr__'s stub takes tensors and modules only; any value is stored at run time
    model.ds_autotp_dtype = dtype  # type: ignore[assignment]
    return apply_autotp(model, tp_size, section.get("partition_config"), kwargs.get("tp_group"))
