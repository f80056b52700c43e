"""``engine.compile(backend=..., compile_kwargs=...)`` and ``engine.is_compiled``, as DeepSpeed has them.

Accelerate calls ``engine.compile(backend=..., compile_kwargs=...)`` whenever a dynamo backend is set
(``accelerate launch --dynamo_backend ...`` or ``Accelerator(dynamo_backend=...)``). Without this
method the call reached ``nn.Module.compile``, which takes no ``compile_kwargs``.

Note: [compile in place] As DeepSpeed does, the wrapped module is compiled in place
(``module.compile(backend=..., **compile_kwargs)``): ``module(...)`` then runs a compiled
``_call_impl``, still an ``nn.Module`` call, so ``engine.module`` stays the user's module (checkpoints,
``state_dict`` keys and ``unwrap_model`` are unchanged) and module hooks keep firing. At ZeRO-3 those
hooks are FSDP2's (marked not to be traced; dynamo breaks the graph around them) and ours (Note
[divergence]): ours are made opaque to dynamo too (:func:`_opaque_unit_hooks`), so their rank-agreement
collective runs eagerly, once per unit call, as without compilation. DeepCompile (DeepSpeed's own
graph passes, ``compile.deepcompile`` and ``schedule``) is not built: ``schedule`` is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ds_engine.log import get_logger

logger = get_logger()


def default_backend() -> str:
    """The accelerator's compile backend (DeepSpeed's ``get_accelerator().get_compile_backend()``)."""
    from ds_accel import get_accelerator

    getter = getattr(get_accelerator(), "get_compile_backend", None)
    return getter() if getter is not None else "inductor"


def _opaque_unit_hooks(optimizer: Any) -> None:
    """Stage 3: keep dynamo out of our unit hooks (Note [compile in place]); other stages: nothing to do."""
    if optimizer is not None:
        optimizer.prepare_for_compile()


def compile_module(
    module: nn.Module, *, backend: str | Callable[..., Any], compile_kwargs: dict[str, Any], optimizer: Any
) -> None:
    """Compile ``module`` in place with ``torch.compile(backend=backend, **compile_kwargs)``."""
    _opaque_unit_hooks(optimizer)
    module.compile(**{**compile_kwargs, "backend": backend})


class EngineCompile:
    """DeepSpeed's ``compile`` / ``is_compiled`` on the engine; expects ``module`` and ``optimizer``."""

    module: nn.Module
    optimizer: Any

    def compile(
        self,
        backend: str | Callable[..., Any] | None = None,
        compile_kwargs: dict[str, Any] | None = None,
        schedule: Any = None,
        compiled_autograd_enabled: bool = False,
    ) -> None:
        """Compile the wrapped module in place (Note [compile in place]); a second call does nothing.

        ``backend``: a ``torch.compile`` backend name or callable (default: the accelerator's);
        ``compile_kwargs``: the other ``torch.compile`` arguments (``mode``, ``fullgraph``, ``dynamic``,
        ``options``); ``compiled_autograd_enabled``: accepted, not applied (the backward runs eagerly;
        a warning says so).
        """
        if self.is_compiled:
            return
        if schedule is not None:
            raise NotImplementedError(
                "engine.compile(schedule=...) configures DeepCompile, which is not built here; "
                "compile without a schedule (plain torch.compile)"
            )
        kwargs = dict(compile_kwargs or {})
        if "backend" in kwargs:
            logger.warning(
                "engine.compile: the 'backend' in compile_kwargs is overridden by the backend argument"
            )
            kwargs.pop("backend")
        compile_module(
            self.module, backend=backend or default_backend(), compile_kwargs=kwargs, optimizer=self.optimizer
        )
        if compiled_autograd_enabled:
            logger.warning(
                "engine.compile(compiled_autograd_enabled=True): compiled autograd is not applied here; "
                "the forward is compiled, the backward runs eagerly"
            )
        self.__dict__["_ds_compiled"] = True
        self.__dict__["_ds_compile_kwargs"] = kwargs

    @property
    def is_compiled(self) -> bool:
        """Whether :meth:`compile` has run."""
        return bool(self.__dict__.get("_ds_compiled", False))
