"""`deepspeed.comm`: DeepSpeed's collective API (ds_comm)."""

from ds_comm import *  # noqa: F403
from ds_comm import __all__  # noqa: F401
