"""``CIFAR10`` with synthetic images: deterministic, class-dependent, sized by CIFAR_STANDIN_TRAIN/TEST."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch


class CIFAR10(torch.utils.data.Dataset):
    """CIFAR-10's constructor signature; ``len`` is small so an epoch takes seconds on CPU ranks."""

    def __init__(
        self,
        root: str,
        train: bool = True,
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        download: bool = False,
    ) -> None:
        n = int(
            os.environ.get("CIFAR_STANDIN_TRAIN" if train else "CIFAR_STANDIN_TEST", "64" if train else "20")
        )
        g = torch.Generator().manual_seed(0 if train else 1)
        self.targets = [i % 10 for i in range(n)]  # every class present (the script divides by class counts)
        noise = torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8)
        # a class-dependent colour shift, so the network has something to learn
        shift = torch.tensor(self.targets, dtype=torch.int16).view(n, 1, 1, 1) * 20
        self.data = ((noise.to(torch.int16) + shift) % 256).to(torch.uint8)  # HWC uint8, as CIFAR10.data
        self.transform, self.target_transform = transform, target_transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img, target = self.data[index], self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target
