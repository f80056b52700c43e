"""``deepspeed.monitor.tensorboard`` (ds_engine.monitor)."""

from ds_engine.monitor import TensorBoardMonitor

__all__ = ["TensorBoardMonitor"]
