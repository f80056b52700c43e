"""``deepspeed.compression.helper``: ``recursive_getattr`` / ``recursive_setattr`` (ds_engine.module_paths),
which DeepSpeed-Chat's LoRA code imports; the compression functions are refused with the reason."""

from ds_engine.module_paths import recursive_getattr, recursive_setattr
from ds_engine.not_provided import module_getattr

__getattr__ = module_getattr(__name__)

__all__ = ["recursive_getattr", "recursive_setattr"]
