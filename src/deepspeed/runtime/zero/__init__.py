"""`deepspeed.runtime.zero`: DeepSpeed's path for the ZeRO-3 helpers (the names of `deepspeed.zero`)."""

from deepspeed import zero as _zero
from deepspeed.runtime.zero import partition_parameters
from deepspeed.zero import *  # noqa: F403

__all__ = [*_zero.__all__, "partition_parameters"]
