"""``isinstance(x, DTensor)`` without importing DTensor.

``torch.distributed.tensor`` costs over a second to import (it pulls in sympy), and only stage 3 and
tensor parallelism make DTensors (Note [lazy] in :mod:`ds_zero.stage3`). Until that module has been
imported by someone, no object can be a DTensor, so the check needs no import of its own.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:  # for the annotation only: importing it at run time is what this module avoids
    from torch.distributed.tensor import DTensor


def is_dtensor(value: Any) -> TypeGuard[DTensor]:
    """Whether ``value`` is a ``torch.distributed.tensor.DTensor`` (importing nothing)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(value, module.DTensor)
