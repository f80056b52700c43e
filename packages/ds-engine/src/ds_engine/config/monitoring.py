"""Monitoring and profiling sections: ``tensorboard``, ``csv_monitor``, ``wandb``, ``comet``,
``comms_logger``, ``flops_profiler``, ``timers``."""

from __future__ import annotations

from pydantic import Field

from ds_engine.config.base import ConfigModel


class TensorBoardConfig(ConfigModel):
    """``tensorboard``: write training events with ``torch.utils.tensorboard`` (needs ``tensorboard``)."""

    enabled: bool = False
    """Write events."""
    output_path: str = ""
    """Directory for the event files (default: ``./runs``)."""
    job_name: str = "DeepSpeedJobName"
    """Sub-directory name under ``output_path``."""


class CSVMonitorConfig(ConfigModel):
    """``csv_monitor``: write training events as CSV files, one per event name."""

    enabled: bool = False
    """Write events."""
    output_path: str = ""
    """Directory for the CSV files (default: ``./csv_monitor``)."""
    job_name: str = "DeepSpeedJobName"
    """Sub-directory name under ``output_path``."""


class WandbConfig(ConfigModel):
    """``wandb``: Weights & Biases logging (needs ``wandb``: ``pip install 'ds-engine[wandb]'``);
    ``WANDB_MODE=offline`` keeps the run on disk."""

    enabled: bool = False
    """Log events to W&B."""
    group: str | None = None
    """W&B group."""
    team: str | None = None
    """W&B team (entity)."""
    project: str = "deepspeed"
    """W&B project."""


class CometConfig(ConfigModel):
    """``comet``: Comet ML logging (needs ``comet_ml``: ``pip install 'ds-engine[comet]'``);
    ``online: false`` writes an offline archive."""

    enabled: bool = False
    """Log events to Comet."""
    samples_log_interval: int = 100
    """Samples between logged events."""
    project: str | None = None
    """Comet project."""
    workspace: str | None = None
    """Comet workspace."""
    api_key: str | None = None
    """Comet API key."""
    experiment_name: str | None = None
    """Experiment name."""
    experiment_key: str | None = None
    """Experiment key."""
    online: bool | None = None
    """Log online."""
    mode: str | None = None
    """Comet mode."""


class CommsLoggerConfig(ConfigModel):
    """``comms_logger``: record every collective (op, bytes, time) in ``ds_comm.comms_log``."""

    enabled: bool = False
    """Record collectives."""
    verbose: bool = False
    """Log each collective as it happens."""
    prof_all: bool = True
    """Record every op (otherwise only ``prof_ops``)."""
    debug: bool = False
    """Add the calling function to each record."""
    prof_ops: list[str] = Field(default_factory=list)
    """Ops recorded when ``prof_all`` is false."""


class FlopsProfilerConfig(ConfigModel):
    """``flops_profiler``: profile parameters, MACs/FLOPs and latency per module during the forward of
    global step ``profile_step`` on rank 0, printed (or written to ``output_file``) after that step."""

    enabled: bool = False
    """Profile one step."""
    recompute_fwd_factor: float = 0.0
    """Extra forward passes from activation recomputation."""
    profile_step: int = 1
    """Step at which the profile is taken."""
    module_depth: int = -1
    """Depth of modules shown."""
    top_modules: int = 1
    """Top modules shown per depth."""
    detailed: bool = True
    """Show the detailed profile."""
    output_file: str | None = None
    """Where to write the profile."""


class ThroughputTimerConfig(ConfigModel):
    """``timers.throughput``: the samples/s timer behind ``steps_per_print``."""

    enabled: bool = True
    """Measure throughput."""
    synchronized: bool = True
    """Synchronize the accelerator before reading the timer."""


class TimersConfig(ConfigModel):
    """``timers``."""

    throughput: ThroughputTimerConfig = Field(default_factory=ThroughputTimerConfig)
    """Throughput timer."""
