"""Training events to TensorBoard and CSV files (rank 0), under DeepSpeed's event names.

Events are ``(name, value, global_samples)``: ``Train/Samples/train_loss``, ``Train/Samples/lr``,
``Train/Samples/loss_scale`` (fp16).
"""

from __future__ import annotations

import csv
import os
from typing import Any

from ds_engine.config import DeepSpeedConfigError


class CsvMonitor:
    """One CSV file per event name: ``<output_path>/<job_name>/<name with / as _>.csv``."""

    def __init__(self, output_path: str, job_name: str) -> None:
        self.directory = os.path.join(output_path or "csv_monitor", job_name)
        os.makedirs(self.directory, exist_ok=True)

    def write(self, events: list[tuple[str, float, int]]) -> None:
        """Append each event as a ``step,value`` row."""
        for name, value, step in events:
            path = os.path.join(self.directory, name.replace("/", "_") + ".csv")
            new = not os.path.exists(path)
            with open(path, "a", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                if new:
                    writer.writerow(["step", name])
                writer.writerow([step, value])

    def close(self) -> None:
        """Nothing to release."""


class TensorBoardMonitor:
    """Scalars through ``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package)."""

    def __init__(self, output_path: str, job_name: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise DeepSpeedConfigError("'tensorboard.enabled' needs the tensorboard package (pip install "
                                       f"tensorboard): {exc}") from None
        self.writer = SummaryWriter(log_dir=os.path.join(output_path or "runs", job_name))

    def write(self, events: list[tuple[str, float, int]]) -> None:
        """Add each event as a scalar."""
        for name, value, step in events:
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        """Close the writer."""
        self.writer.close()


def build_monitors(cfg: Any, rank: int) -> list[Any]:
    """The monitors a config enables (rank 0 only writes)."""
    if rank != 0:
        return []
    monitors: list[Any] = []
    if cfg.tensorboard.enabled:
        monitors.append(TensorBoardMonitor(cfg.tensorboard.output_path, cfg.tensorboard.job_name))
    if cfg.csv_monitor.enabled:
        monitors.append(CsvMonitor(cfg.csv_monitor.output_path, cfg.csv_monitor.job_name))
    return monitors
