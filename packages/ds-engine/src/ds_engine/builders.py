"""Build the optimizer and the LR schedule a config names, checking ``params`` against the class.

Note: [adam-w-mode] DeepSpeed's ``Adam`` means AdamW (decoupled weight decay) unless the config sets
``adam_w_mode: false``; ``AdamW`` is always AdamW. As in DeepSpeed, both build ``FusedAdam`` (from
ds_kernels: Triton on accelerators, torch's fused kernel on CPU, and no ``torch._dynamo`` import, see
Note [lazy dynamo]); ``torch_adam: true`` asks for torch's own class instead. Without ds_kernels, torch's
AdamW/Adam (fused on CPU) is used. Lamb and Lion likewise prefer ds_kernels' ``FusedLamb``/``FusedLion``
and fall back to :mod:`ds_engine.torch_optimizers`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ds_engine import lr_schedules
from ds_engine.config.errors import DeepSpeedConfigError, closest_key
from ds_engine.config.optim import OptimizerConfig, SchedulerConfig
from ds_engine.torch_optimizers import Lamb, Lion

_NOT_BUILT = {"onebitadam", "zerooneadam", "onebitlamb", "muadam", "muadamw", "musgd", "muon"}


def _kernel(name: str) -> type | None:
    """``ds_kernels.<name>`` when that package provides it, else None (a torch path is used)."""
    try:
        import ds_kernels
    except ImportError:
        return None
    return getattr(ds_kernels, name, None)


def accepted_params(cls: Callable[..., Any]) -> set[str] | None:
    """Keyword names ``cls`` accepts, or None when it takes ``**kwargs``."""
    sig = inspect.signature(cls)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n for n, p in sig.parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}


def check_params(cls: Callable[..., Any], params: dict[str, Any], where: str, skip: Iterable[str]) -> None:
    """Raise a DeepSpeedConfigError naming ``where.<key>`` for a key ``cls`` does not take."""
    valid = accepted_params(cls)
    if valid is None:
        return
    valid -= set(skip)
    for key in params:
        if key not in valid:
            hint = closest_key(key, valid)
            name = getattr(cls, "__name__", str(cls))
            tail = f"; did you mean '{where}.{hint}'?" if hint else f"; valid: {', '.join(sorted(valid))}"
            raise DeepSpeedConfigError(f"'{where}.{key}' is not a parameter of {name}{tail}")


def _torch_optimizer_class(name: str) -> type[torch.optim.Optimizer] | None:
    lowered = {n.lower(): getattr(torch.optim, n) for n in dir(torch.optim)}
    cls = lowered.get(name.lower())
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
        return cls
    return None


def _adam(params: dict[str, Any], *, adamw: bool, on_cpu: bool) -> tuple[type, dict[str, Any]]:
    """The Adam class and extra kwargs per Note [adam-w-mode]."""
    requested = bool(params.pop("adam_w_mode", True))
    w_mode = adamw or requested
    torch_adam = bool(params.pop("torch_adam", False))
    params.pop("fp32_optimizer_states", None)
    fused = None if torch_adam else _kernel("FusedAdam")
    if fused is not None:
        return fused, {"adam_w_mode": w_mode}
    if params.pop("bias_correction", True) is False:
        raise DeepSpeedConfigError("'optimizer.params.bias_correction: false' needs ds_kernels' FusedAdam")
    params.pop("set_grad_none", None)
    cls = torch.optim.AdamW if w_mode else torch.optim.Adam
    extra: dict[str, Any] = {}
    if not torch_adam and "foreach" not in params and "fused" not in params and on_cpu:
        extra["fused"] = True  # torch's fused CPU kernel: one pass over all parameters
    return cls, extra


def build_optimizer(cfg: OptimizerConfig, model_parameters: Any, *, on_cpu: bool) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names, over ``model_parameters`` (tensors or param-group dicts).

    ``on_cpu``: the parameters live in host memory, where torch's fused AdamW is used directly.
    """
    name = cfg.type
    lowered = name.lower()
    params = dict(cfg.params)
    if lowered in _NOT_BUILT:
        raise DeepSpeedConfigError(f"'optimizer.type': {name} is not supported yet by this project")
    extra: dict[str, Any] = {}
    if lowered in ("adam", "adamw"):
        cls, extra = _adam(params, adamw=lowered == "adamw", on_cpu=on_cpu)
    elif lowered == "lamb":
        cls = _kernel("FusedLamb") or Lamb
    elif lowered == "lion":
        cls = _kernel("FusedLion") or Lion
    else:
        found = _torch_optimizer_class(name)
        if found is None:
            known = ["Adam", "AdamW", "Lamb", "Lion"] + [
                n for n in dir(torch.optim) if _torch_optimizer_class(n)
            ]
            hint = closest_key(name, known)
            tail = f"; did you mean '{hint}'?" if hint else ""
            raise DeepSpeedConfigError(f"'optimizer.type': unknown optimizer {name!r}{tail}")
        cls = found
    check_params(cls, params, "optimizer.params", skip=("self", "params", *extra))
    try:
        return cls(model_parameters, **params, **extra)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DeepSpeedConfigError(f"'optimizer' ({name}): {exc}") from None


def _schedule_class(name: str) -> Callable[..., Any]:
    if name in lr_schedules.SCHEDULE_CLASSES:
        return lr_schedules.SCHEDULE_CLASSES[name]
    cls = getattr(torch.optim.lr_scheduler, name, None)
    if isinstance(cls, type) and issubclass(cls, torch.optim.lr_scheduler.LRScheduler):
        return cls
    torch_names = [n for n in dir(torch.optim.lr_scheduler) if n[:1].isupper()]
    hint = closest_key(name, [*lr_schedules.VALID_LR_SCHEDULES, *torch_names])
    tail = f"; did you mean '{hint}'?" if hint else ""
    raise DeepSpeedConfigError(f"'scheduler.type': unknown LR schedule {name!r}{tail}")


def build_scheduler(cfg: SchedulerConfig, optimizer: Any) -> Any:
    """The LR schedule ``cfg`` names, driving ``optimizer`` (an engine optimizer or a torch one)."""
    cls = _schedule_class(cfg.type)
    check_params(cls, cfg.params, "scheduler.params", skip=("self", "optimizer"))
    target = (
        optimizer
        if cls in lr_schedules.SCHEDULE_CLASSES.values()
        else lr_schedules.get_torch_optimizer(optimizer)
    )
    try:
        return cls(target, **cfg.params)
    except (TypeError, ValueError) as exc:
        raise DeepSpeedConfigError(f"'scheduler' ({cfg.type}): {exc}") from None
