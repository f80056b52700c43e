"""Stateless helpers over the two shard layouts a stage-3 parameter can have.

* **Init shard** (built under :class:`ds_zero.stage3.zero_init.Init`, before wrapping): as in
  DeepSpeed, ``param.data`` is an empty tensor and ``param.ds_tensor`` holds this rank's equal slice
  of the flattened parameter, padded to ``ceil(numel / N)`` elements.
* **Unit shard** (after wrapping, FSDP2): the parameter is a ``DTensor`` sharded on dim 0 the way
  ``torch.chunk`` splits rows: rank ``r`` holds rows ``[r*c, min((r+1)*c, d0))`` with ``c = ceil(d0/N)``.

Both gather through one padded ``all_gather_into_tensor`` on the group's communication device, so
an Init shard on the CPU (``remote_device="cpu"``) still gathers over NCCL.
"""

from __future__ import annotations

from typing import Any, TypeGuard

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

import ds_comm
from ds_zero.stage3.status import zero_param


def comm_device(group: Any = None) -> torch.device:
    """Where tensors must be to take part in ``group``'s collectives."""
    if ds_comm.get_backend(group) == "gloo":
        return torch.device("cpu")
    from ds_accel import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def is_init_shard(param: Tensor) -> bool:
    """Whether ``param`` was partitioned by ``zero.Init`` and not yet wrapped."""
    return (
        getattr(param, "ds_tensor", None) is not None
        and isinstance(param, nn.Parameter)
        and not isinstance(param, DTensor)
    )


def is_unit_shard(param: Tensor) -> TypeGuard[DTensor]:
    """Whether ``param`` is a row-sharded DTensor managed by a stage-3 shard unit."""
    return isinstance(param, DTensor)


def init_partition(param: Tensor) -> Tensor:
    """An Init shard's flat partition on this rank (``param.ds_tensor``)."""
    local = zero_param(param).ds_tensor
    if local is None:
        raise ValueError("not a zero.Init shard: the parameter has no ds_tensor")
    if getattr(param, "_ds_nvme_partition", None) is not None:  # zero.Init(remote_device="nvme")
        from ds_zero.stage3.nvme_params import load_partition

        load_partition(param, local)
    return local


def is_zero3_param(param: Any) -> bool:
    """Whether ``param`` is partitioned (by ``zero.Init`` or by a stage-3 unit): not whole on this rank."""
    return is_init_shard(param) or is_unit_shard(param)


# --- Init shards (flat, padded) --------------------------------------------------------------------
def partition_numel(numel: int, world: int) -> int:
    """Elements per rank of a flat partition (the last ranks hold padding)."""
    return -(-numel // world)


@torch.no_grad()
def scatter_flat(full: Tensor, *, group: Any, src: int, device: torch.device) -> Tensor:
    """Rank ``src``'s ``full`` split into equal flat partitions; returns this rank's, on ``device``."""
    world = ds_comm.get_world_size(group)
    part = partition_numel(full.numel(), world)
    dev = comm_device(group)
    out = torch.zeros(part, dtype=full.dtype, device=dev)
    if world == 1:
        out[: full.numel()].copy_(full.reshape(-1))
        return out.to(device)
    chunks = None
    if ds_comm.get_rank() == src:
        # views of the full value; only the last, short partition gets a padded copy
        flat = full.reshape(-1).to(dev)
        chunks = [flat[r * part : (r + 1) * part] for r in range(world)]
        for r, chunk in enumerate(chunks):
            if chunk.numel() < part:
                chunks[r] = torch.zeros(part, dtype=full.dtype, device=dev)
                chunks[r][: chunk.numel()].copy_(chunk)
    ds_comm.scatter(out, chunks, src=src, group=group)
    return out.to(device)


@torch.no_grad()
def gather_flat(local: Tensor, *, numel: int, group: Any) -> Tensor:
    """Every rank's flat partition, concatenated and cut to ``numel`` (on the communication device)."""
    world = ds_comm.get_world_size(group)
    dev = comm_device(group)
    src = local.to(dev)
    if world == 1:
        return src[:numel].clone()
    out = torch.empty(local.numel() * world, dtype=local.dtype, device=dev)
    ds_comm.all_gather_into_tensor(out, src.contiguous(), group=group)
    return out[:numel]


@torch.no_grad()
def flat_slice(full: Tensor, *, group: Any) -> Tensor:
    """This rank's padded flat partition of ``full`` (no communication)."""
    world, rank = ds_comm.get_world_size(group), ds_comm.get_rank(group)
    part = partition_numel(full.numel(), world)
    out = torch.zeros(part, dtype=full.dtype, device=full.device)
    start = rank * part
    piece = full.reshape(-1)[start : start + part]
    out[: piece.numel()].copy_(piece)
    return out


# --- unit shards (row chunks of a DTensor) ---------------------------------------------------------
def row_range(rows: int, world: int, rank: int) -> tuple[int, int]:
    """The rows rank ``rank`` holds when ``torch.chunk`` splits ``rows`` rows ``world`` ways."""
    per = -(-rows // world)
    start = min(rank * per, rows)
    return start, min(start + per, rows)


def flat_range(shape: torch.Size, world: int, rank: int) -> tuple[int, int]:
    """The same range, in elements of the flattened parameter."""
    if len(shape) == 0:
        return (0, 1) if rank == 0 else (1, 1)
    row = int(torch.Size(shape[1:]).numel())
    start, end = row_range(shape[0], world, rank)
    return start * row, end * row


def mesh_group(param: DTensor) -> Any:
    """The process group a unit-sharded parameter is split over."""
    return param.device_mesh.get_group()


@torch.no_grad()
def gather_rows(param: DTensor) -> Tensor:
    """The full value of a unit-sharded parameter (every rank must call it)."""
    group = mesh_group(param)
    world = ds_comm.get_world_size(group)
    local = param.to_local().detach()
    shape = param.shape
    per = -(-shape[0] // world)
    dev = comm_device(group)
    padded = torch.zeros((per, *shape[1:]), dtype=local.dtype, device=dev)
    padded[: local.shape[0]].copy_(local)
    if world == 1:
        return padded[: shape[0]]
    out = torch.empty((per * world, *shape[1:]), dtype=local.dtype, device=dev)
    ds_comm.all_gather_into_tensor(out, padded, group=group)
    return out[: shape[0]]


@torch.no_grad()
def write_rows(param: DTensor, full: Tensor) -> None:
    """Copy this rank's rows of ``full`` into a unit-sharded parameter (no communication)."""
    group = mesh_group(param)
    start, end = row_range(param.shape[0], ds_comm.get_world_size(group), ds_comm.get_rank(group))
    local = param.to_local().detach()
    local.copy_(full[start:end].to(device=local.device, dtype=local.dtype))


def gather_full(param: Tensor) -> Tensor:
    """The full value of any stage-3 parameter, shaped like the model sees it (every rank must call)."""
    if is_unit_shard(param):
        return gather_rows(param)
    if is_init_shard(param):
        z = zero_param(param)
        return gather_flat(init_partition(param).detach(), numel=z.ds_numel, group=z.ds_process_group).view(
            z.ds_shape
        )
    return param.detach()


@torch.no_grad()
def broadcast_full(full: Tensor, *, src: int, group: Any) -> Tensor:
    """``full`` as rank ``src`` has it (``src`` is a global rank), on every rank of ``group``."""
    if ds_comm.get_world_size(group) == 1:
        return full
    buf = full.to(comm_device(group)).contiguous()
    ds_comm.broadcast(buf, src, group=group)
    return buf
