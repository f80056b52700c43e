"""DeepSpeed's per-parameter ZeRO-3 attributes, which clients read on partitioned parameters.

``ds_id`` (unique id), ``ds_numel`` / ``ds_shape`` (the full size and shape, whatever the local
layout), ``ds_status`` (:class:`ZeroParamStatus`), ``ds_persist`` (stays whole on every rank),
``ds_process_group``.

Note: [ds attributes] These attributes (and the few more listed on :class:`ZeroParameter`) are set at
run time on the parameter objects themselves, plain Parameters and FSDP2's DTensors alike, as
DeepSpeed does; torch's types do not declare them, so code reads and writes them through
:func:`zero_param`, which only re-types the same object.
"""

from __future__ import annotations

import enum
import itertools
import weakref
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn


class ZeroParamType(enum.Enum):
    """How a parameter is held (DeepSpeed's values)."""

    NORMAL = 1  # an ordinary parameter
    PARTITIONED = 2  # split over the data-parallel ranks
    REMOTE = 3  # held by one rank


class ZeroParamStatus(enum.Enum):
    """Whether a partitioned parameter's full value is present (DeepSpeed's values)."""

    AVAILABLE = 1
    NOT_AVAILABLE = 2
    INFLIGHT = 3


if TYPE_CHECKING:  # never instantiated: the attributes live on ordinary parameters (Note [ds attributes])

    class ZeroParameter(nn.Parameter):
        """A parameter as ZeRO-3 annotates it."""

        ds_id: int
        ds_shape: torch.Size
        ds_numel: int
        ds_persist: bool
        ds_status: ZeroParamStatus
        ds_process_group: Any
        ds_tensor: Tensor | None  # zero.Init's flat partition of this rank (None once materialised)
        ds_active_sub_modules: set[Any]
        ds_z3_leaf_module: nn.Module
        _ds_unit: Any  # the FSDP unit managing it (ds_zero.stage3.sharding)
        _ds_holders: list[tuple[weakref.ref[nn.Module], str]]
        _ds_persistent_owner: weakref.ref[Any]  # the persistent masters holder (ds_zero.stage3.params)


def zero_param(param: Tensor) -> ZeroParameter:
    """``param`` itself, typed with its ``ds_*`` attributes (Note [ds attributes])."""
    return cast("ZeroParameter", param)


_ids = itertools.count()


def mark(param: Tensor, *, shape: torch.Size, group: Any, persist: bool, status: ZeroParamStatus) -> None:
    """Give ``param`` the ``ds_*`` attributes (keeping an existing ``ds_id``)."""
    z = zero_param(param)
    if getattr(param, "ds_id", None) is None:
        z.ds_id = next(_ids)
    z.ds_shape = torch.Size(shape)
    z.ds_numel = int(torch.Size(shape).numel())
    z.ds_persist = persist
    z.ds_status = status
    z.ds_process_group = group


def full_numel(param: Tensor) -> int:
    """The parameter's full element count, also while ``zero.Init`` leaves it empty on this rank."""
    numel = getattr(param, "ds_numel", None)
    return param.numel() if numel is None else int(numel)


def full_dim(param: Tensor) -> int:
    """The parameter's full number of dimensions (see :func:`full_numel`)."""
    shape = getattr(param, "ds_shape", None)
    return param.dim() if shape is None else len(shape)
