"""``deepspeed.monitor.monitor``: ``Monitor`` and ``MonitorMaster`` (ds_engine.monitor)."""

from ds_engine.monitor import (
    CometMonitor,
    Monitor,
    MonitorMaster,
    TensorBoardMonitor,
    WandbMonitor,
    csvMonitor,
)

__all__ = ["CometMonitor", "Monitor", "MonitorMaster", "TensorBoardMonitor", "WandbMonitor", "csvMonitor"]
