"""``FlopsProfiler`` and ``get_model_profile``: parameters, MACs/FLOPs and forward latency per module.

Counting (see :mod:`ds_engine.profiling.counting`) happens in a ``TorchDispatchMode`` entered only while
the profiled model's forward runs; each op is charged to the innermost module whose forward is running
(a stack kept by forward pre/post hooks), so a module's own figure excludes its children and the totals
add children up, as DeepSpeed's do. The figures live on the modules under DeepSpeed's attribute names
(``__flops__``, ``__macs__``, ``__params__``, ``__duration__``) between ``start_profile`` and
``end_profile``, where DeepSpeed's helpers and clients read them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ds_engine.log import get_logger
from ds_engine.profiling.counting import OpCounter
from ds_engine.profiling.formatting import (
    duration_to_string,
    macs_to_string,
    number_to_string,
    params_to_string,
)

if TYPE_CHECKING:
    from ds_engine.engine import DeepSpeedEngine

logger = get_logger()
_ATTRS = (
    "__flops__",
    "__macs__",
    "__params__",
    "__expert_params__",
    "__model_expert_params__",
    "__start_time__",
    "__duration__",
)


def _synchronize() -> None:
    from ds_accel import get_accelerator

    get_accelerator().synchronize()


# Note: [module figures] The figures are plain attributes set on each module at runtime, under DeepSpeed's
# names, which clients read; torch's Module type cannot declare them (its __getattr__ types any unknown
# name as Tensor | Module), so this module reads and writes them only through these helpers.
def _count(module: nn.Module, attr: str) -> int:
    value: int = getattr(module, attr)
    return value


def _seconds(module: nn.Module, attr: str) -> float:
    value: float = getattr(module, attr)
    return value


def _set(module: nn.Module, attr: str, value: float) -> None:
    setattr(module, attr, value)


def _add(module: nn.Module, attr: str, amount: float) -> None:
    _set(module, attr, getattr(module, attr) + amount)


def get_module_flops(module: nn.Module) -> int:
    """FLOPs of ``module``'s forward including its children (during a profile)."""
    return _count(module, "__flops__") + sum(get_module_flops(child) for child in module.children())


def get_module_macs(module: nn.Module) -> int:
    """MACs of ``module``'s forward including its children (during a profile)."""
    return _count(module, "__macs__") + sum(get_module_macs(child) for child in module.children())


def get_module_duration(module: nn.Module) -> float:
    """Forward seconds of ``module``; a container never called itself (``ModuleList``) sums its children."""
    duration = _seconds(module, "__duration__")
    if duration == 0:
        duration = sum(get_module_duration(child) for child in module.children())
    return duration


def get_module_params(module: nn.Module) -> int:
    """Parameters of ``module`` and its children held by this rank, expert parameters included (during a
    profile)."""
    return _count(module, "__params__") + _count(module, "__expert_params__")


class FlopsProfiler:
    """DeepSpeed's profiler: ``start_profile()``, run forward, read totals, ``print_model_profile()``,
    ``end_profile()``. ``ds_engine`` (the engine, when it drives the profile) adds world sizes and the
    engine's backward/step timings to the printed summary."""

    def __init__(
        self, model: nn.Module, ds_engine: DeepSpeedEngine | None = None, recompute_fwd_factor: float = 0.0
    ) -> None:
        self.model = model
        self.ds_engine = ds_engine
        self.recompute_fwd_factor = recompute_fwd_factor
        self.started = False
        self.func_patched = False  # DeepSpeed's flag name: true while counting is installed
        self._handles: list[Any] = []
        self._stack: list[nn.Module] = []
        self._mode: OpCounter | None = None
        self.flops = self.macs = self.params = 0

    # --- lifecycle ----------------------------------------------------------------------------------
    def start_profile(self, ignore_list: Iterable[type] | None = None) -> None:
        """Reset the figures and hook every module (except instances of ``ignore_list`` types)."""
        logger.info("Flops profiler started")
        self.reset_profile()
        ignored = tuple(ignore_list or ())
        for module in self.model.modules():
            if ignored and isinstance(module, ignored):
                continue
            self._handles.append(module.register_forward_pre_hook(self._enter))
            self._handles.append(module.register_forward_hook(self._leave, always_call=True))
        # The counting mode is live only inside the model's own forward (Note in the module docstring).
        self._handles.append(self.model.register_forward_pre_hook(self._open_mode, prepend=True))
        self._handles.append(self.model.register_forward_hook(self._close_mode, always_call=True))
        self.started = True
        self.func_patched = True

    def stop_profile(self) -> None:
        """Stop counting; the figures stay readable until :meth:`end_profile`."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.func_patched = False

    def reset_profile(self) -> None:
        """Zero every module's figures (parameters are recounted)."""
        for module in self.model.modules():
            figures: dict[str, float] = dict.fromkeys(_ATTRS, 0)  # Note [module figures]
            figures.update({"__params__": sum(p.numel() for p in module.parameters())})
            figures.update({"__start_time__": 0.0, "__duration__": 0.0})
            for attr, value in figures.items():
                _set(module, attr, value)

    def end_profile(self) -> None:
        """Stop and remove the figures from the modules."""
        if not self.started:
            return
        self.stop_profile()
        self.started = False
        for module in self.model.modules():
            for attr in _ATTRS:
                if hasattr(module, attr):
                    delattr(module, attr)
        logger.info("Flops profiler finished")

    # --- hooks ----------------------------------------------------------------------------------------
    def _open_mode(self, module: nn.Module, inputs: Any) -> None:
        if self._mode is None:
            self._mode = OpCounter(self._charge)
            self._mode.__enter__()

    def _close_mode(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self._mode is not None and not self._stack:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)

    def _enter(self, module: nn.Module, inputs: Any) -> None:
        self._stack.append(module)
        _synchronize()
        _set(module, "__start_time__", time.perf_counter())

    def _leave(self, module: nn.Module, inputs: Any, output: Any) -> None:
        _synchronize()
        _add(module, "__duration__", time.perf_counter() - _seconds(module, "__start_time__"))
        if self._stack and self._stack[-1] is module:
            self._stack.pop()

    def _charge(self, flops: int, macs: int) -> None:
        if self._stack:  # ops outside any module's forward belong to no module (as in DeepSpeed)
            owner = self._stack[-1]
            _add(owner, "__flops__", flops)
            _add(owner, "__macs__", macs)

    # --- totals -----------------------------------------------------------------------------------------
    def get_total_flops(self, as_string: bool = False) -> int | str:
        """Forward FLOPs of the whole model."""
        total = get_module_flops(self.model)
        return number_to_string(total) if as_string else total

    def get_total_macs(self, as_string: bool = False) -> int | str:
        """Forward MACs of the whole model."""
        total = get_module_macs(self.model)
        return macs_to_string(total) if as_string else total

    def get_total_duration(self, as_string: bool = False) -> float | str:
        """Forward seconds of the whole model."""
        total = get_module_duration(self.model)
        return duration_to_string(total) if as_string else total

    def get_total_params(self, as_string: bool = False) -> int | str:
        """Parameters held by this rank."""
        total = get_module_params(self.model)
        return params_to_string(total) if as_string else total

    def is_expert_tensor_parallelism_enabled(self) -> bool:
        """Expert tensor parallelism is not built here (no MoE layers report it)."""
        return False

    def print_model_profile(
        self,
        profile_step: int = 1,
        module_depth: int = -1,
        top_modules: int = 1,
        detailed: bool = True,
        output_file: str | None = None,
    ) -> None:
        """Print the summary, the top modules per depth and (``detailed``) the module tree, to stdout or
        ``output_file``."""
        if not self.started:
            return
        from ds_engine.profiling.report import render_profile

        self.flops, self.macs, self.params = (
            get_module_flops(self.model),
            get_module_macs(self.model),
            get_module_params(self.model),
        )
        text = render_profile(
            self,
            profile_step=profile_step,
            module_depth=module_depth,
            top_modules=top_modules,
            detailed=detailed,
        )
        if output_file:
            import os

            os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
            with open(output_file, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        else:
            print(text)

    def print_model_aggregated_profile(self, module_depth: int = -1, top_modules: int = 1) -> None:
        """Print the top ``top_modules`` module types by params, MACs and latency at each depth."""
        from ds_engine.profiling.report import render_aggregated

        if not hasattr(self.model, "__flops__"):
            print(
                "no __flops__ attribute in the model, call this function after start_profile and before end_profile"
            )
            return
        print(render_aggregated(self.model, module_depth=module_depth, top_modules=top_modules))


def _run(model: nn.Module, args: list[Any], kwargs: dict[str, Any], mode: str) -> None:
    if mode == "generate":
        # the client model's own generate() (Hugging Face's), which torch's Module type cannot declare
        model.generate(*args, **kwargs)  # type: ignore[operator]
    else:
        model(*args, **kwargs)


def get_model_profile(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    print_profile: bool = True,
    detailed: bool = True,
    module_depth: int = -1,
    top_modules: int = 1,
    warm_up: int = 1,
    as_string: bool = True,
    output_file: str | None = None,
    ignore_modules: list[type] | None = None,
    mode: str = "forward",
) -> tuple[Any, Any, Any]:
    """Profile one forward (after ``warm_up`` unprofiled ones) of ``model`` in eval mode on
    ``torch.empty(input_shape)`` or on ``args``/``kwargs``; returns ``(flops, macs, params)``, as strings
    when ``as_string``."""
    if not isinstance(model, nn.Module):
        raise TypeError("model must be a PyTorch module")
    args, kwargs = list(args or []), dict(kwargs or {})
    if mode not in ("forward", "generate"):
        raise ValueError(f"mode must be 'forward' or 'generate', not {mode!r}")
    model.eval()
    if input_shape is not None:
        if not isinstance(input_shape, tuple) or not input_shape:
            raise ValueError("input_shape must be a non-empty tuple")
        first = next(model.parameters(), None)
        args = [
            torch.empty(
                input_shape,
                dtype=first.dtype if first is not None else torch.float32,
                device=first.device if first is not None else "cpu",
            )
        ]
    if not args and not kwargs:
        raise ValueError("get_model_profile needs input_shape, args or kwargs")
    prof = FlopsProfiler(model)
    with torch.no_grad():
        for _ in range(warm_up):
            _run(model, args, kwargs, mode)
        prof.start_profile(ignore_list=ignore_modules)
        _run(model, args, kwargs, mode)
    flops, macs, params = get_module_flops(model), get_module_macs(model), get_module_params(model)
    if print_profile:
        prof.print_model_profile(
            profile_step=warm_up,
            module_depth=module_depth,
            top_modules=top_modules,
            detailed=detailed,
            output_file=output_file,
        )
    prof.end_profile()
    if as_string:
        return number_to_string(flops), macs_to_string(macs), params_to_string(params)
    return flops, macs, params
