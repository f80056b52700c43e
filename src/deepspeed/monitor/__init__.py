"""``deepspeed.monitor``: training-event monitors (ds_engine.monitor)."""
