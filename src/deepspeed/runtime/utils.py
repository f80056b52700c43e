"""``deepspeed.runtime.utils``: the helpers clients import (ds_engine.runtime_utils, ds_zero.grad_clip)."""

from ds_engine.runtime_utils import (
    copy_to_device,
    empty_cache,
    move_to_device,
    noop_context,
    noop_decorator,
    see_memory_usage,
    set_random_seed,
)
from ds_zero.grad_clip import clip_grad_norm_, get_global_norm

__all__ = [
    "clip_grad_norm_",
    "copy_to_device",
    "empty_cache",
    "get_global_norm",
    "move_to_device",
    "noop_context",
    "noop_decorator",
    "see_memory_usage",
    "set_random_seed",
]
