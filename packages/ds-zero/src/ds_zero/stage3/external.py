"""``register_external_parameter``: a module's forward uses a parameter that another module owns.

DeepSpeed needs this so the parameter is gathered when the *using* module runs. Here it feeds the unit
rule (Note [units] in :mod:`ds_zero.stage3.policy`): the parameter counts as used by the registering
module, so both modules end up in one shard unit. Register before the model is wrapped (as DeepSpeed
users do, inside the model's ``__init__``); after wrapping, units are fixed.
"""

from __future__ import annotations

import weakref

from torch import nn

_EXTERNAL: weakref.WeakKeyDictionary[nn.Module, dict[int, nn.Parameter]] = weakref.WeakKeyDictionary()


def register_external_parameter(module: nn.Module, parameter: nn.Parameter) -> None:
    """Declare that ``module``'s forward uses ``parameter``, which another module owns."""
    if not isinstance(parameter, nn.Parameter):
        raise TypeError(
            f"register_external_parameter expects an nn.Parameter, got {type(parameter).__name__}"
        )
    _EXTERNAL.setdefault(module, {})[id(parameter)] = parameter


def unregister_external_parameter(module: nn.Module, parameter: nn.Parameter) -> None:
    """Undo :func:`register_external_parameter`."""
    registered = _EXTERNAL.get(module, {})
    if id(parameter) not in registered:
        raise ValueError("the parameter was not registered as external to this module")
    del registered[id(parameter)]


def external_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters registered as external to ``module``."""
    return list(_EXTERNAL.get(module, {}).values())
