"""`deepspeed.utils.groups`: DeepSpeed's process-group getters, read from the one mesh (ds_parallel.groups).

``groups.mpu`` reads (and assigning it sets) ``ds_parallel.groups.mpu``, so there is one copy of it.
"""

import sys
from types import ModuleType
from typing import Any

import ds_parallel.groups as _impl
from ds_parallel.groups import *  # noqa: F403 - the getters are this module's surface


class _GroupsModule(ModuleType):
    def __getattr__(self, name: str) -> Any:
        return getattr(_impl, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "mpu":
            _impl.mpu = value
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _GroupsModule
del sys.modules[__name__].__dict__["mpu"]  # read through to ds_parallel.groups.mpu
