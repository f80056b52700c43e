"""`deepspeed.runtime.pipe.schedule`: the 1F1B order (ds_parallel.pipe.schedule)."""

from ds_parallel.pipe.schedule import one_f_one_b

__all__ = ["one_f_one_b"]
