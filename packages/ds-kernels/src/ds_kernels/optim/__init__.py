"""Optimizer classes with DeepSpeed's names and signatures (``torch.optim.Optimizer`` subclasses)."""

from .adagrad import DeepSpeedCPUAdagrad
from .adam import DeepSpeedCPUAdam, FusedAdam
from .lamb import FusedLamb
from .lion import DeepSpeedCPULion, FusedLion

__all__ = [
    "DeepSpeedCPUAdagrad",
    "DeepSpeedCPUAdam",
    "DeepSpeedCPULion",
    "FusedAdam",
    "FusedLamb",
    "FusedLion",
]
