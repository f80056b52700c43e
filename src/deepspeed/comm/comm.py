"""`deepspeed.comm.comm`: the same names as `deepspeed.comm`, at DeepSpeed's module path."""

from ds_comm import *  # noqa: F403
