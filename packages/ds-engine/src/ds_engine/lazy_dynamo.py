"""Keep torch's optimizers from importing ``torch._dynamo`` in processes that never compile.

Note: [lazy dynamo] torch marks ``Optimizer.add_param_group``/``zero_grad``/``state_dict``/
``load_state_dict`` and the functional optimizer kernels (``torch.optim.adam.adam``, ...) with
``torch._disable_dynamo``, whose wrapper imports ``torch._dynamo`` on the first call so that it can
tell a compiler not to trace them. That import costs about one CPU-second per process (as much as
``import torch``), paid before the first optimizer step of every rank; the reference DeepSpeed pays it
too. "Do not trace this" means nothing while ``torch._dynamo`` has never been imported, because nothing
can be compiling. So for those functions we pre-fill the wrapper's cache (``fn.__dynamo_disable``, read
only by ``torch._compile._disable_dynamo``) with a shim that calls the function directly while
``torch._dynamo`` is absent, and builds and uses the genuine ``torch._dynamo.disable`` wrapper from the
moment anything imports it (``torch.compile`` does). Behaviour is unchanged; if a torch version no
longer has this cache, the shim is simply never consulted. ``benchmarks/engine_vs_reference.py``
measures the time to first step it saves.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from typing import Any

_FUNCTIONAL = ("adam", "adamw", "sgd", "adagrad", "rmsprop", "adamax", "nadam", "radam", "asgd", "adadelta")
_METHODS = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
_installed = False


def _shim(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        import torch._dynamo

        real = torch._dynamo.disable(fn, True, wrapping=False)
        fn.__dynamo_disable = real  # type: ignore[attr-defined]  # from now on: torch's own path
        return real(*args, **kwargs)

    return call


def _seed(wrapper: Any) -> bool:
    fn = getattr(wrapper, "__wrapped__", None)
    if fn is None or getattr(fn, "__dynamo_disable", None) is not None:
        return False
    fn.__dynamo_disable = _shim(fn)
    return True


def install() -> int:
    """Apply Note [lazy dynamo] once per process (no-op when dynamo is already loaded); returns how many
    functions were covered."""
    global _installed
    if _installed or "torch._dynamo" in sys.modules:
        return 0
    _installed = True
    import torch.optim

    count = sum(_seed(getattr(torch.optim.Optimizer, name, None)) for name in _METHODS)
    for name in _FUNCTIONAL:
        try:
            module = importlib.import_module(f"torch.optim.{name}")
        except ImportError:
            continue
        count += _seed(getattr(module, name, None))
    return count
