"""`deepspeed.runtime.activation_checkpointing.checkpointing`: the same names as `deepspeed.checkpointing`."""

from deepspeed.checkpointing import *  # noqa: F403
from deepspeed.checkpointing import __all__  # noqa: F401
