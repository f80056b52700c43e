"""``deepspeed.monitor.comet`` (ds_engine.monitor)."""

from ds_engine.monitor import CometMonitor

__all__ = ["CometMonitor"]
