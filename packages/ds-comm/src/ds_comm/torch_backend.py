"""DeepSpeed's ``deepspeed.comm.TorchBackend``: the backend object over torch.distributed.

DeepSpeed keeps one such object behind ``deepspeed.comm``; DeepSpeedExamples' communication
benchmark and some tools build one directly. Here it forms the process group through
:func:`ds_comm.init_distributed` (environment discovery included) and answers the collectives with
:mod:`ds_comm.collectives`, so calls made through it are logged like any other.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch.distributed as dist

from ds_comm import collectives
from ds_comm.init import init_distributed


class TorchBackend:
    """``TorchBackend(backend, timeout, init_method, rank=-1, world_size=-1, name="torch")``."""

    def __init__(
        self,
        backend: str | None,
        timeout: timedelta | None,
        init_method: str | None,
        rank: int = -1,
        world_size: int = -1,
        name: str = "torch",
    ) -> None:
        self.name = name
        self.backend = backend
        self.initialized = False
        self.init_process_group(backend, timeout, init_method, rank, world_size)

    def init_process_group(
        self,
        backend: str | None,
        timeout: timedelta | None,
        init_method: str | None,
        rank: int,
        world_size: int,
    ) -> None:
        """Form the default process group unless one exists (a user's own group is kept)."""
        if not dist.is_initialized():
            init_distributed(
                dist_backend=backend,
                timeout=timeout,
                init_method=init_method,
                rank=rank,
                world_size=world_size,
                verbose=False,
            )
        self.backend = dist.get_backend()
        self.initialized = True

    def is_initialized(self) -> bool:
        """Whether the process group exists."""
        return dist.is_initialized()

    def has_all_gather_into_tensor(self) -> bool:
        return True

    def has_reduce_scatter_tensor(self) -> bool:
        return True

    def get_all_gather_function(self) -> Any:
        return collectives.all_gather_into_tensor

    def get_reduce_scatter_function(self) -> Any:
        return collectives.reduce_scatter_tensor

    def __getattr__(self, name: str) -> Any:
        # the collectives (all_reduce, broadcast, get_rank, barrier, ...) with torch.distributed's signatures
        if name in collectives.__all__:
            return getattr(collectives, name)
        raise AttributeError(f"TorchBackend has no attribute {name!r}")
