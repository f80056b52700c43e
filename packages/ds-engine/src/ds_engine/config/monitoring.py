"""Monitoring and profiling sections: ``tensorboard``, ``csv_monitor``, ``wandb``, ``comet``,
``comms_logger``, ``flops_profiler``, ``timers``."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, Field

from ds_engine.config.base import ConfigModel
from ds_engine.config.effects import Effect, applied, section


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


# Note [key effects] in ds_engine.config.effects.
_MONITOR = "ds_engine.monitor:Monitor.__init__"
TENSORBOARD_KEYS: dict[str, Effect] = {
    "enabled": applied(_MONITOR),
    "output_path": applied("ds_engine.monitor:TensorBoardMonitor.__init__"),
    "job_name": applied("ds_engine.monitor:TensorBoardMonitor.__init__"),
}
CSV_MONITOR_KEYS: dict[str, Effect] = {
    "enabled": applied(_MONITOR),
    "output_path": applied("ds_engine.monitor:csvMonitor.__init__"),
    "job_name": applied("ds_engine.monitor:csvMonitor.__init__"),
}
WANDB_KEYS: dict[str, Effect] = {
    "enabled": applied(_MONITOR),
    **{name: applied("ds_engine.monitor:WandbMonitor.__init__") for name in ("group", "team", "project")},
}
COMET_KEYS: dict[str, Effect] = {
    "enabled": applied(_MONITOR),
    **{
        name: applied("ds_engine.monitor:CometMonitor.__init__")
        for name in CometConfig.model_fields
        if name != "enabled"
    },
}
COMMS_LOGGER_KEYS: dict[str, Effect] = {
    name: applied("ds_comm.logging_api:configure", why="the engine passes the config to ds_comm.configure")
    for name in CommsLoggerConfig.model_fields
}
_PROFILE = "ds_engine.profiling.engine_hook:EngineProfile"
FLOPS_PROFILER_KEYS: dict[str, Effect] = {
    "enabled": applied(f"{_PROFILE}.for_engine"),
    "recompute_fwd_factor": applied(f"{_PROFILE}.__init__"),
    "profile_step": applied(f"{_PROFILE}.before_forward"),
    **{
        name: applied(f"{_PROFILE}.after_step")
        for name in ("module_depth", "top_modules", "detailed", "output_file")
    },
}
THROUGHPUT_KEYS: dict[str, Effect] = {
    "enabled": applied("ds_engine.timers:ThroughputTimer.start"),
    "synchronized": applied("ds_engine.timers:ThroughputTimer._sync"),
}
TABLES: dict[type[BaseModel], tuple[str, Mapping[str, Effect]]] = {
    TensorBoardConfig: ("tensorboard", TENSORBOARD_KEYS),
    CSVMonitorConfig: ("csv_monitor", CSV_MONITOR_KEYS),
    WandbConfig: ("wandb", WANDB_KEYS),
    CometConfig: ("comet", COMET_KEYS),
    CommsLoggerConfig: ("comms_logger", COMMS_LOGGER_KEYS),
    FlopsProfilerConfig: ("flops_profiler", FLOPS_PROFILER_KEYS),
    TimersConfig: ("timers", {"throughput": section()}),
    ThroughputTimerConfig: ("timers.throughput", THROUGHPUT_KEYS),
}
