"""DeepSpeed names this project deliberately does not provide, each with the reason.

The ``deepspeed`` meta-package answers an import of one of these with :class:`NotProvidedError`
naming the feature and why (rather than Python's bare "cannot import name"), and
``docs/gen_api_surface.py`` lists them on the API-surface page. Keep the table honest and short:
a name goes here only when a client is known to import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_COMPRESSION = (
    "DeepSpeed Compression (XTC, ZeroQuant, pruning, layer reduction) is not implemented; "
    "only the module-path helpers recursive_getattr / recursive_setattr are provided"
)

#: DeepSpeed module path -> {name: reason}.
NOT_PROVIDED: dict[str, dict[str, str]] = {
    "deepspeed.compression": {
        "init_compression": _COMPRESSION,
        "redundancy_clean": _COMPRESSION,
        "compression_scheduler": _COMPRESSION,
        "convert_conv1d_to_linear": _COMPRESSION,
    },
    "deepspeed.compression.helper": {
        name: _COMPRESSION
        for name in (
            "module_replacement",
            "is_module_compressible",
            "compression_preparation",
            "fix_compression",
            "convert_conv1d_to_linear",
            "generate_pruners",
            "register_on_step_begin",
            "rewrite_optimizer_step",
        )
    },
}


#: DeepSpeed modules and top-level names clients import that do not exist here at all (a plain
#: ModuleNotFoundError / AttributeError): listed on the API-surface page with the reason, while absent.
ABSENT: dict[str, str] = {
    "deepspeed.init_inference": "the inference engine (DeepSpeed-Inference) is not built: this project trains",
}


class NotProvidedError(ImportError):
    """A DeepSpeed name this installation does not provide (the message says why).

    An ImportError rather than an AttributeError: ``from m import name`` replaces an AttributeError
    by a bare "cannot import name", which would hide the reason."""


def module_getattr(module: str) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``module`` that refuses its :data:`NOT_PROVIDED` names clearly
    and answers any other unknown name with the usual AttributeError."""
    refused = NOT_PROVIDED.get(module, {})

    def __getattr__(name: str) -> Any:  # noqa: N807 - installed as a module's __getattr__
        if name in refused:
            raise NotProvidedError(f"{module}.{name} is not provided: {refused[name]}", name=name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
