"""``deepspeed.monitor.csv_monitor`` (ds_engine.monitor)."""

from ds_engine.monitor import csvMonitor

__all__ = ["csvMonitor"]
