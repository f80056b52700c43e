"""``deepspeed.compression``: only the helpers clients use outside compression are provided
(``helper.recursive_getattr`` / ``recursive_setattr``); the compression features are refused with
the reason (ds_engine.not_provided)."""

from deepspeed.compression import helper
from ds_engine.not_provided import module_getattr

__getattr__ = module_getattr(__name__)

__all__ = ["helper"]
