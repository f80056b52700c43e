"""The collectives users call through ``deepspeed.comm``: torch.distributed's, logged when asked.

Each function keeps torch.distributed's signature (so code written for either works with both) and
adds one thing: a :mod:`ds_comm.comms_log` record when logging is on. Byte counts are the payload a
rank contributes (input size for reductions, output size for gathers).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ReduceOp

from ds_comm import comms_log

__all__ = [
    "ReduceOp",
    "all_gather",
    "all_gather_base",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_reduce",
    "all_to_all_single",
    "barrier",
    "broadcast",
    "broadcast_object_list",
    "destroy_process_group",
    "gather",
    "get_backend",
    "get_global_rank",
    "get_local_rank",
    "get_local_world_size",
    "get_rank",
    "get_world_group",
    "get_world_size",
    "inference_all_reduce",
    "irecv",
    "is_available",
    "is_initialized",
    "isend",
    "monitored_barrier",
    "new_group",
    "recv",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_base",
    "reduce_scatter_tensor",
    "scatter",
    "send",
]


# torch 2.13 renamed the tensor-in, tensor-out collectives (the old names warn); use what exists.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _synchronize() -> None:
    from ds_accel import get_accelerator

    get_accelerator().synchronize()


def _run(op: str, nbytes: int, group: Any, async_op: bool, call: Callable[[], Any]) -> Any:
    if not comms_log.LOG.enabled:
        return call()
    return comms_log.timed(op, nbytes, dist.get_world_size(group), async_op, call, _synchronize)


# --- process-group state ------------------------------------------------------------------------------
def is_available() -> bool:
    return dist.is_available()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank(group: Any = None) -> int:
    """This rank in ``group`` (the world by default); 0 when no process group exists, as DeepSpeed does."""
    return dist.get_rank(group) if is_initialized() else 0


def get_world_size(group: Any = None) -> int:
    return dist.get_world_size(group) if is_initialized() else 1


def get_local_rank() -> int:
    """Node-local rank from the launcher's ``LOCAL_RANK`` (0 when unset)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def get_local_world_size() -> int:
    return int(os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or 1)


def get_world_group() -> Any:
    return dist.group.WORLD


def get_global_rank(group: Any, group_rank: int) -> int:
    return dist.get_global_rank(group, group_rank)


def get_backend(group: Any = None) -> str:
    return str(dist.get_backend(group))


def new_group(ranks: Sequence[int] | None = None, **kwargs: Any) -> Any:
    return dist.new_group(ranks=list(ranks) if ranks is not None else None, **kwargs)


def destroy_process_group(group: Any = None) -> None:
    dist.destroy_process_group(group)


# --- collectives ----------------------------------------------------------------------------------------
def barrier(group: Any = None, async_op: bool = False, device_ids: list[int] | None = None) -> Any:
    return _run(
        "barrier",
        0,
        group,
        async_op,
        lambda: dist.barrier(group=group, async_op=async_op, device_ids=device_ids),
    )


def monitored_barrier(group: Any = None, timeout: Any = None, wait_all_ranks: bool = False) -> Any:
    return _run(
        "monitored_barrier",
        0,
        group,
        False,
        lambda: dist.monitored_barrier(group=group, timeout=timeout, wait_all_ranks=wait_all_ranks),
    )


def broadcast(tensor: torch.Tensor, src: int, group: Any = None, async_op: bool = False) -> Any:
    return _run(
        "broadcast",
        _nbytes(tensor),
        group,
        async_op,
        lambda: dist.broadcast(tensor, src, group=group, async_op=async_op),
    )


def all_reduce(
    tensor: torch.Tensor, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False
) -> Any:
    return _run(
        "all_reduce",
        _nbytes(tensor),
        group,
        async_op,
        lambda: dist.all_reduce(tensor, op=op, group=group, async_op=async_op),
    )


def inference_all_reduce(tensor: torch.Tensor, op: Any = ReduceOp.SUM, group: Any = None) -> Any:
    """DeepSpeed's low-latency all-reduce for inference; a plain all-reduce here."""
    return all_reduce(tensor, op=op, group=group)


def reduce(
    tensor: torch.Tensor, dst: int, op: Any = ReduceOp.SUM, group: Any = None, async_op: bool = False
) -> Any:
    return _run(
        "reduce",
        _nbytes(tensor),
        group,
        async_op,
        lambda: dist.reduce(tensor, dst, op=op, group=group, async_op=async_op),
    )


def all_gather(
    tensor_list: list[torch.Tensor], tensor: torch.Tensor, group: Any = None, async_op: bool = False
) -> Any:
    nbytes = sum(_nbytes(t) for t in tensor_list)
    return _run(
        "all_gather",
        nbytes,
        group,
        async_op,
        lambda: dist.all_gather(tensor_list, tensor, group=group, async_op=async_op),
    )


def all_gather_into_tensor(
    output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any = None, async_op: bool = False
) -> Any:
    return _run(
        "all_gather_into_tensor",
        _nbytes(output_tensor),
        group,
        async_op,
        lambda: _all_gather_single(output_tensor, input_tensor, group=group, async_op=async_op),
    )


def reduce_scatter_tensor(
    output: torch.Tensor,
    input: torch.Tensor,
    op: Any = ReduceOp.SUM,
    group: Any = None,
    async_op: bool = False,
) -> Any:
    return _run(
        "reduce_scatter_tensor",
        _nbytes(input),
        group,
        async_op,
        lambda: _reduce_scatter_single(output, input, op=op, group=group, async_op=async_op),
    )


def reduce_scatter(
    output: torch.Tensor,
    input_list: list[torch.Tensor],
    op: Any = ReduceOp.SUM,
    group: Any = None,
    async_op: bool = False,
) -> Any:
    nbytes = sum(_nbytes(t) for t in input_list)
    return _run(
        "reduce_scatter",
        nbytes,
        group,
        async_op,
        lambda: dist.reduce_scatter(output, input_list, op=op, group=group, async_op=async_op),
    )


# DeepSpeed's older names for the tensor-in, tensor-out forms.
all_gather_base = all_gather_into_tensor
reduce_scatter_base = reduce_scatter_tensor


def all_to_all_single(
    output: torch.Tensor,
    input: torch.Tensor,
    output_split_sizes: list[int] | None = None,
    input_split_sizes: list[int] | None = None,
    group: Any = None,
    async_op: bool = False,
) -> Any:
    return _run(
        "all_to_all_single",
        _nbytes(input),
        group,
        async_op,
        lambda: dist.all_to_all_single(
            output, input, output_split_sizes, input_split_sizes, group=group, async_op=async_op
        ),
    )


def gather(
    tensor: torch.Tensor,
    gather_list: list[torch.Tensor] | None = None,
    dst: int = 0,
    group: Any = None,
    async_op: bool = False,
) -> Any:
    return _run(
        "gather",
        _nbytes(tensor),
        group,
        async_op,
        lambda: dist.gather(tensor, gather_list, dst=dst, group=group, async_op=async_op),
    )


def scatter(
    tensor: torch.Tensor,
    scatter_list: list[torch.Tensor] | None = None,
    src: int = 0,
    group: Any = None,
    async_op: bool = False,
) -> Any:
    return _run(
        "scatter",
        _nbytes(tensor),
        group,
        async_op,
        lambda: dist.scatter(tensor, scatter_list, src=src, group=group, async_op=async_op),
    )


def send(tensor: torch.Tensor, dst: int, group: Any = None, tag: int = 0) -> Any:
    return _run("send", _nbytes(tensor), group, False, lambda: dist.send(tensor, dst, group=group, tag=tag))


def recv(tensor: torch.Tensor, src: int | None = None, group: Any = None, tag: int = 0) -> Any:
    return _run("recv", _nbytes(tensor), group, False, lambda: dist.recv(tensor, src, group=group, tag=tag))


def isend(tensor: torch.Tensor, dst: int, group: Any = None, tag: int = 0) -> Any:
    return _run("isend", _nbytes(tensor), group, True, lambda: dist.isend(tensor, dst, group=group, tag=tag))


def irecv(tensor: torch.Tensor, src: int | None = None, group: Any = None, tag: int = 0) -> Any:
    return _run("irecv", _nbytes(tensor), group, True, lambda: dist.irecv(tensor, src, group=group, tag=tag))


def broadcast_object_list(object_list: list[Any], src: int = 0, group: Any = None) -> Any:
    return _run(
        "broadcast_object_list",
        0,
        group,
        False,
        lambda: dist.broadcast_object_list(object_list, src=src, group=group),
    )


def all_gather_object(object_list: list[Any], obj: Any, group: Any = None) -> Any:
    return _run(
        "all_gather_object", 0, group, False, lambda: dist.all_gather_object(object_list, obj, group=group)
    )
