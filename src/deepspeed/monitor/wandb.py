"""``deepspeed.monitor.wandb`` (ds_engine.monitor)."""

from ds_engine.monitor import WandbMonitor

__all__ = ["WandbMonitor"]
