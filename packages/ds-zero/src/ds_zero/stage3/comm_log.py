"""FSDP2's collectives in the project's log of collectives (:mod:`ds_comm.comms_log`), and through shared
memory where every rank is on this host (Note [shared-memory collectives] in :mod:`ds_zero.shm_collectives`).

FSDP2 calls ``torch.distributed`` directly, so without this the ``comms_logger`` section and
``ds_comm.comms_log`` would not see stage 3's parameter gathers and gradient reduce-scatters, which are
most of its traffic. FSDP2's public hooks ``set_custom_all_gather`` / ``set_custom_reduce_scatter``
take the object that issues each unit's collective; the ones here issue exactly what FSDP2's defaults
do (``all_gather_single`` / ``reduce_scatter_single`` over the group FSDP2 passes, with its allocation)
and add a record under the names :mod:`ds_comm.collectives` uses, with the size of the group FSDP2
chose, so the record says where the bytes went (e.g. hpZ's backward gathers inside the secondary group,
Note [hpZ] in :mod:`ds_zero.stage3.policy`). When logging is off the cost is one flag check per call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ds_comm import comms_log
from ds_zero import shm_collectives

try:  # FSDP2's default collectives (their allocation included); absent before torch 2.8's custom-comm hooks
    from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather, DefaultReduceScatter
except ImportError:  # pragma: no cover - older torch: FSDP2's collectives stay unlogged
    DefaultAllGather = DefaultReduceScatter = object  # type: ignore[assignment,misc]

# torch 2.13 renamed the tensor-in, tensor-out collectives; FSDP2 calls whichever its version has.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_SUM, _AVG = dist.ReduceOp.SUM, dist.ReduceOp.AVG


def _synchronize() -> None:
    from ds_accel import get_accelerator

    get_accelerator().synchronize()


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class LoggedAllGather(DefaultAllGather):
    """FSDP2's default parameter all-gather, recorded as ``all_gather_into_tensor`` (gathered bytes)."""

    def __call__(
        self,
        output_tensor: torch.Tensor,
        input_tensor: torch.Tensor,
        group: dist.ProcessGroup,
        async_op: bool = False,
    ) -> Any:
        host = shm_collectives.get(group, input_tensor.device)  # Note [shared-memory collectives]
        if host is not None:
            host.all_gather(output_tensor, input_tensor)
            return None  # done: FSDP2 waits only on a returned Work

        def call() -> Any:
            return _all_gather_single(output_tensor, input_tensor, group=group, async_op=async_op)

        if not comms_log.LOG.enabled:
            return call()
        return comms_log.timed(
            "all_gather_into_tensor", _nbytes(output_tensor), group.size(), async_op, call, _synchronize
        )


class LoggedReduceScatter(DefaultReduceScatter):
    """FSDP2's default gradient reduce-scatter, recorded as ``reduce_scatter_tensor`` (input bytes)."""

    def __call__(
        self,
        output_tensor: torch.Tensor,
        input_tensor: torch.Tensor,
        group: dist.ProcessGroup,
        op: Any,
        async_op: bool = False,
    ) -> Any:
        average = {_SUM: False, _AVG: True}.get(op) if isinstance(op, dist.ReduceOp.RedOpType) else None
        host = shm_collectives.get(group, input_tensor.device) if average is not None else None
        if (
            host is not None and average is not None
        ):  # Note [shared-memory collectives]; a pre-multiplied sum stays with c10d
            host.reduce_scatter(output_tensor, input_tensor, average=average)
            return None

        def call() -> Any:
            return _reduce_scatter_single(output_tensor, input_tensor, op=op, group=group, async_op=async_op)

        if not comms_log.LOG.enabled:
            return call()
        return comms_log.timed(
            "reduce_scatter_tensor", _nbytes(input_tensor), group.size(), async_op, call, _synchronize
        )


def log_unit_collectives(unit: Any) -> None:
    """Route ``unit``'s (an ``FSDPModule``) gathers and reduce-scatters through the logged versions.

    Skipped, leaving FSDP2's own, where this torch lacks the hooks or the unit has more than one
    parameter group (FSDP2 refuses a custom collective there)."""
    gather = getattr(unit, "set_custom_all_gather", None)
    scatter = getattr(unit, "set_custom_reduce_scatter", None)
    if gather is None or scatter is None or DefaultAllGather is object:
        return
    try:
        gather(LoggedAllGather())
        scatter(LoggedReduceScatter())
    except ValueError:  # several parameter groups in one unit: FSDP2 keeps its own collectives
        pass
