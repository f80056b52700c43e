"""Training events to TensorBoard, CSV files, Weights & Biases and Comet (rank 0), under DeepSpeed's names.

Events are ``(name, value, global_samples)`` tuples: ``Train/Samples/train_loss``, ``Train/Samples/lr``,
``Train/Samples/loss_scale`` (fp16) and, with ``wall_clock_breakdown``, ``Train/Samples/elapsed_time_ms_*``.
``engine.monitor`` is a :class:`MonitorMaster`; clients add their own events with
``engine.monitor.write_events([(name, value, step), ...])``.

W&B, Comet and TensorBoard come from their own packages, installed as optional extras of ds-engine
(``pip install 'ds-engine[wandb]'``); a config that enables one whose package is missing fails at
``initialize`` with an error naming the extra. Offline modes are those packages' own: ``WANDB_MODE=offline``,
``comet.online: false`` (or ``COMET_OFFLINE_DIRECTORY``).
"""

from __future__ import annotations

import csv
import importlib
import os
from typing import Any

from ds_engine.config import DeepSpeedConfigError

Event = tuple[str, Any, int]


def _require(package: str, section: str, extra: str) -> Any:
    """Import ``package`` or fail naming the config key and the extra that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise DeepSpeedConfigError(
            f"'{section}.enabled' needs the {package} package: pip install "
            f"'ds-engine[{extra}]' (or pip install {package}); import failed: {exc}"
        ) from None


class Monitor:
    """DeepSpeed's monitor interface: ``write_events(event_list)``; ``close()`` releases files."""

    def __init__(self, monitor_config: Any) -> None:
        self.monitor_config = monitor_config
        self.enabled = bool(getattr(monitor_config, "enabled", True))

    def write_events(self, event_list: list[Event]) -> None:
        """Record each ``(name, value, step)``."""
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release (nothing by default)."""


class csvMonitor(Monitor):  # noqa: N801 - DeepSpeed's class name
    """DeepSpeed's CSV layout: ``<output_path>/<job_name>/<name, '/' and ' ' as '_'>.csv`` with a
    ``step,<last part of the name>`` header and one ``step,value`` row per event."""

    def __init__(self, csv_config: Any) -> None:
        super().__init__(csv_config)
        self.job_name = csv_config.job_name
        self.output_path = csv_config.output_path
        self.log_dir = os.path.join(self.output_path or "csv_monitor", self.job_name)
        os.makedirs(self.log_dir, exist_ok=True)
        self.filenames: list[str] = []

    def write_events(self, event_list: list[Event]) -> None:
        """Append a row per event (the header once per file)."""
        for name, value, step in event_list:
            filename = name.replace("/", "_").replace(" ", "_")
            path = os.path.join(self.log_dir, filename + ".csv")
            new = not os.path.exists(path)
            with open(path, "a", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                if new:
                    writer.writerow(["step", name.split("/")[-1]])
                writer.writerow([step, value])
            if filename not in self.filenames:
                self.filenames.append(filename)


CsvMonitor = csvMonitor


class TensorBoardMonitor(Monitor):
    """Scalars through ``torch.utils.tensorboard.SummaryWriter`` in ``<output_path>/<job_name>``."""

    def __init__(self, tensorboard_config: Any) -> None:
        super().__init__(tensorboard_config)
        _require("tensorboard", "tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.output_path = tensorboard_config.output_path
        self.job_name = tensorboard_config.job_name
        log_dir = os.path.join(self.output_path or "runs", self.job_name)
        os.makedirs(log_dir, exist_ok=True)
        self.summary_writer = SummaryWriter(log_dir=log_dir)

    def write_events(self, event_list: list[Event], flush: bool = True) -> None:
        """Add each event as a scalar."""
        for name, value, step in event_list:
            self.summary_writer.add_scalar(name, value, step)
        if flush:
            self.summary_writer.flush()

    def flush(self) -> None:
        """Write buffered events to disk."""
        self.summary_writer.flush()

    def close(self) -> None:
        """Close the writer."""
        self.summary_writer.close()


class WandbMonitor(Monitor):
    """``wandb.init(project, group, entity=team)``; each event is ``wandb.log({name: value}, step=step)``."""

    def __init__(self, wandb_config: Any) -> None:
        super().__init__(wandb_config)
        self._wandb = _require("wandb", "wandb", "wandb")
        self.group, self.team, self.project = wandb_config.group, wandb_config.team, wandb_config.project
        self.run = self._wandb.init(project=self.project, group=self.group, entity=self.team)

    def log(self, data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> Any:
        """``wandb.log`` on this monitor's run."""
        return self.run.log(data, step=step, commit=commit)

    def write_events(self, event_list: list[Event]) -> None:
        """Log each event at its step."""
        for name, value, step in event_list:
            self.log({name: value}, step=step)

    def close(self) -> None:
        """Finish the run (an offline run's files are complete after this)."""
        self.run.finish()


class CometMonitor(Monitor):
    """``comet_ml.start(...)``; an event name is logged again only after ``samples_log_interval`` samples."""

    def __init__(self, comet_config: Any) -> None:
        super().__init__(comet_config)
        comet_ml = _require("comet_ml", "comet", "comet")
        self.samples_log_interval = comet_config.samples_log_interval
        self._last_logged: dict[str, int] = {}
        self.experiment = comet_ml.start(
            api_key=comet_config.api_key,
            project=comet_config.project,
            workspace=comet_config.workspace,
            experiment_key=comet_config.experiment_key,
            mode=comet_config.mode,
            online=comet_config.online,
        )
        if comet_config.experiment_name is not None:
            self.experiment.set_name(comet_config.experiment_name)

    def _due(self, name: str, samples: int) -> bool:
        last = self._last_logged.get(name)
        if last is None or samples - last >= self.samples_log_interval:
            self._last_logged[name] = samples
            return True
        return False

    def write_events(self, event_list: list[Event]) -> None:
        """Log each event that is due at its step (global samples)."""
        for name, value, samples in event_list:
            if self._due(name, samples):
                self.experiment.log_metric(name, value, step=samples)

    def close(self) -> None:
        """End the experiment (an offline one writes its archive now)."""
        self.experiment.end()


class MonitorMaster(Monitor):
    """Every monitor a config enables, on rank 0 (other ranks hold none and write nothing).

    ``monitor_config`` has DeepSpeed's ``tensorboard``, ``csv_monitor``, ``wandb`` and ``comet`` sections
    (the whole engine config does)."""

    def __init__(self, monitor_config: Any, rank: int | None = None) -> None:
        self.monitor_config = monitor_config
        if rank is None:
            import ds_comm

            rank = ds_comm.get_rank()
        self.tb_monitor = self.csv_monitor = self.wandb_monitor = self.comet_monitor = None
        sections = [getattr(monitor_config, key) for key in ("tensorboard", "csv_monitor", "wandb", "comet")]
        self.enabled = any(section.enabled for section in sections)
        if rank != 0:
            return
        tb, csv_cfg, wandb_cfg, comet_cfg = sections
        self.tb_monitor = TensorBoardMonitor(tb) if tb.enabled else None
        self.csv_monitor = csvMonitor(csv_cfg) if csv_cfg.enabled else None
        self.wandb_monitor = WandbMonitor(wandb_cfg) if wandb_cfg.enabled else None
        self.comet_monitor = CometMonitor(comet_cfg) if comet_cfg.enabled else None

    @property
    def monitors(self) -> list[Monitor]:
        """The monitors this rank writes to."""
        return [m for m in (self.tb_monitor, self.wandb_monitor, self.csv_monitor, self.comet_monitor) if m]

    def write_events(self, event_list: list[Event]) -> None:
        """Send the events to every monitor (a no-op off rank 0)."""
        for monitor in self.monitors:
            monitor.write_events(event_list)

    def close(self) -> None:
        """Close every monitor."""
        for monitor in self.monitors:
            monitor.close()


def build_monitors(cfg: Any, rank: int) -> list[Any]:
    """The monitors a config enables on ``rank`` (rank 0 only writes)."""
    return MonitorMaster(cfg, rank=rank).monitors
