"""DeepSpeed's per-parameter ZeRO-3 attributes, which clients read on partitioned parameters.

``ds_id`` (unique id), ``ds_numel`` / ``ds_shape`` (the full size and shape, whatever the local
layout), ``ds_status`` (:class:`ZeroParamStatus`), ``ds_persist`` (stays whole on every rank),
``ds_process_group``.
"""

from __future__ import annotations

import enum
import itertools
from typing import Any

import torch
from torch import Tensor


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


_ids = itertools.count()


def mark(param: Tensor, *, shape: torch.Size, group: Any, persist: bool, status: ZeroParamStatus) -> None:
    """Give ``param`` the ``ds_*`` attributes (keeping an existing ``ds_id``)."""
    if getattr(param, "ds_id", None) is None:
        param.ds_id = next(_ids)
    param.ds_shape = torch.Size(shape)
    param.ds_numel = int(torch.Size(shape).numel())
    param.ds_persist = persist
    param.ds_status = status
    param.ds_process_group = group


def full_numel(param: Tensor) -> int:
    """The parameter's full element count, also while ``zero.Init`` leaves it empty on this rank."""
    numel = getattr(param, "ds_numel", None)
    return param.numel() if numel is None else int(numel)


def full_dim(param: Tensor) -> int:
    """The parameter's full number of dimensions (see :func:`full_numel`)."""
    shape = getattr(param, "ds_shape", None)
    return param.dim() if shape is None else len(shape)
