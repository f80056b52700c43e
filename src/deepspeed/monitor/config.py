"""``deepspeed.monitor.config``: the monitor sections (ds_engine.config.monitoring)."""

from __future__ import annotations

from typing import Any

from ds_engine.config.monitoring import CometConfig, CSVMonitorConfig, TensorBoardConfig, WandbConfig

CSVConfig = CSVMonitorConfig


class DeepSpeedMonitorConfig:
    """The four monitor sections together, with ``enabled`` when any is on (what ``MonitorMaster`` reads)."""

    def __init__(
        self, tensorboard: Any = None, wandb: Any = None, csv_monitor: Any = None, comet: Any = None
    ) -> None:
        self.tensorboard = TensorBoardConfig.model_validate(tensorboard or {})
        self.wandb = WandbConfig.model_validate(wandb or {})
        self.csv_monitor = CSVMonitorConfig.model_validate(csv_monitor or {})
        self.comet = CometConfig.model_validate(comet or {})
        self.enabled = any(s.enabled for s in (self.tensorboard, self.wandb, self.csv_monitor, self.comet))


def get_monitor_config(param_dict: dict[str, Any]) -> DeepSpeedMonitorConfig:
    """The monitor sections of a DeepSpeed config dict."""
    return DeepSpeedMonitorConfig(
        **{key: param_dict.get(key, {}) for key in ("tensorboard", "wandb", "csv_monitor", "comet")}
    )


__all__ = [
    "CSVConfig",
    "CometConfig",
    "DeepSpeedMonitorConfig",
    "TensorBoardConfig",
    "WandbConfig",
    "get_monitor_config",
]
