"""``Compose``, ``ToTensor`` (HWC uint8 -> CHW float in [0, 1]) and ``Normalize`` with torchvision's meaning."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x


class ToTensor:
    """HWC uint8 image -> CHW float tensor scaled to [0, 1]."""

    def __call__(self, img: Any) -> torch.Tensor:
        t = torch.as_tensor(img)
        return t.permute(2, 0, 1).float().div(255.0)


class Normalize:
    """(x - mean) / std per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return (t - self.mean) / self.std
