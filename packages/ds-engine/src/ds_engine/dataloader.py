"""The engine's data loader: a distributed sampler over the data-parallel ranks, micro-batch sized.

As in DeepSpeed, the sampler is torch's ``DistributedSampler`` (shuffled with seed 0) and its epoch is
not advanced, so every pass visits the samples in the same order as DeepSpeed's loader does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset


class DeepSpeedDataLoader:
    """Iterable over micro-batches of ``dataset`` for this data-parallel rank."""

    def __init__(
        self,
        *,
        dataset: Dataset,
        batch_size: int,
        dp_world_size: int,
        dp_rank: int,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        data_sampler: Any = None,
        drop_last: bool = False,
        pin_memory: bool = False,
        num_workers: int = 0,
    ) -> None:
        if not isinstance(dataset, Dataset | IterableDataset):
            raise ValueError(f"training_data must be a torch Dataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.dataloader_drop_last = drop_last
        self.pin_memory = pin_memory
        self.num_local_io_workers = num_workers
        if data_sampler is None and not isinstance(dataset, IterableDataset):
            data_sampler = DistributedSampler(dataset, num_replicas=dp_world_size, rank=dp_rank)
        self.data_sampler = data_sampler
        self.dataloader: DataLoader | None = None
        self._iter: Iterator[Any] | None = None

    def __len__(self) -> int:
        n = len(self.data_sampler)
        return n // self.batch_size if self.dataloader_drop_last else math.ceil(n / self.batch_size)

    def _make(self) -> DataLoader:
        kwargs: dict[str, Any] = dict(
            batch_size=self.batch_size,
            sampler=self.data_sampler,
            num_workers=self.num_local_io_workers,
            drop_last=self.dataloader_drop_last,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
        )
        if self.collate_fn is not None:
            kwargs["collate_fn"] = self.collate_fn
        return DataLoader(self.dataset, **kwargs)

    def __iter__(self) -> DeepSpeedDataLoader:
        self.dataloader = self._make()
        self._iter = iter(self.dataloader)
        return self

    def __next__(self) -> Any:
        if self._iter is None:
            iter(self)
        assert self._iter is not None
        return next(self._iter)


class RepeatingLoader:
    """Iterate over ``loader`` forever, starting it again whenever it is exhausted (DeepSpeed's name,
    used by pipeline training loops that call ``next()`` without counting epochs)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.data_iter = iter(loader)

    def __iter__(self) -> RepeatingLoader:
        return self

    def __next__(self) -> Any:
        try:
            return next(self.data_iter)
        except StopIteration:
            self.data_iter = iter(self.loader)
            return next(self.data_iter)  # an empty loader raises StopIteration here, as DeepSpeed's does
