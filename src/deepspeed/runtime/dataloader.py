"""``deepspeed.runtime.dataloader``: ``RepeatingLoader`` and ``DeepSpeedDataLoader`` (ds_engine.dataloader)."""

from ds_engine.dataloader import DeepSpeedDataLoader, RepeatingLoader

__all__ = ["DeepSpeedDataLoader", "RepeatingLoader"]
