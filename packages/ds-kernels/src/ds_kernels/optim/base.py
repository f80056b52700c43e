"""Bookkeeping shared by the optimizer classes: state creation, step counters, batching, state dicts.

Note [state layout]: every optimizer keeps, per parameter, ``state["step"]`` as a 0-dim float32
CPU tensor (what ``torch.optim.AdamW`` keeps when it is neither fused nor capturable) and its moment
tensors under torch's names (``exp_avg``, ``exp_avg_sq``). State dicts therefore load into
``torch.optim.AdamW`` and back. Counting steps on the CPU means the bias corrections are computed
on the host without waiting for the device; a state dict whose steps live on a device (from a fused
torch optimizer) has them moved to the CPU once, at load time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch

__all__ = ["Batch", "StepOptimizer"]


@dataclass
class Batch:
    """Parameters of one group that share a device and a step number: one functional call."""

    device: torch.device
    step: float
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    states: list[dict[str, Any]]

    def column(self, key: str) -> list[torch.Tensor]:
        """The state tensor ``key`` of every parameter of the batch."""
        return [s[key] for s in self.states]


class StepOptimizer(torch.optim.Optimizer):
    """Base of the fused optimizers (see Note [state layout])."""

    #: Names of the per-parameter state tensors, created as zeros on first use.
    state_names: tuple[str, ...] = ()
    #: Whether ``zero_grad()`` sets gradients to None by default (DeepSpeed's ``set_grad_none``).
    set_grad_none: bool = True

    def _state_dtype(self, param: torch.Tensor) -> torch.dtype:
        """dtype of the state tensors for ``param`` (the parameter's own, unless overridden)."""
        return param.dtype

    def _check_param(self, param: torch.Tensor, where: str) -> None:
        """Hook for subclasses to reject a parameter (e.g. a CPU-only optimizer); ``where`` names it."""

    def zero_grad(self, set_to_none: bool | None = None) -> None:
        """Clear gradients; ``set_to_none`` defaults to the constructor's ``set_grad_none``."""
        super().zero_grad(set_to_none=self.set_grad_none if set_to_none is None else set_to_none)

    def _init_state(self, param: torch.Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[param]
        if len(state) == 0:
            # An old DeepSpeed checkpoint may carry the step on the group.
            state["step"] = torch.tensor(float(group.get("step", 0)), dtype=torch.float32)
            for name in self.state_names:
                state[name] = torch.zeros_like(
                    param, dtype=self._state_dtype(param), memory_format=torch.contiguous_format
                )
        return state

    def _batches(
        self, group: dict[str, Any], group_index: int, grads: Iterable[torch.Tensor | None] | None = None
    ) -> list[Batch]:
        """Advance the step counter of every parameter that has a gradient and batch them.

        ``grads`` overrides ``p.grad`` (FusedLamb's legacy ``grads=`` argument).
        """
        chosen: list[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]] = []
        grads = [None] * len(group["params"]) if grads is None else list(grads)
        for i, (p, g) in enumerate(zip(group["params"], grads)):
            g = p.grad if g is None else g
            if g is None:
                continue
            self._check_param(p, f"param_groups[{group_index}]['params'][{i}]")
            if g.is_sparse:
                g = self._densify(g, group, f"param_groups[{group_index}]['params'][{i}]")
            chosen.append((p, g, self._init_state(p, group)))
        if not chosen:
            return []
        steps = [s["step"] for _, _, s in chosen]
        torch._foreach_add_(steps, 1.0)
        values = torch.stack(steps).tolist()
        batches: dict[tuple[torch.device, float], Batch] = {}
        for (p, g, s), step in zip(chosen, values):
            key = (p.device, step)
            batch = batches.get(key)
            if batch is None:
                batch = batches[key] = Batch(p.device, step, [], [], [])
            batch.params.append(p)
            batch.grads.append(g)
            batch.states.append(s)
        return list(batches.values())

    def _densify(self, grad: torch.Tensor, group: dict[str, Any], where: str) -> torch.Tensor:
        raise RuntimeError(
            f"{type(self).__name__}: {where} has a sparse gradient; this optimizer takes dense gradients"
        )

    def _check_group(self, group: dict[str, Any], index: int) -> None:
        """Reject torch-only options that a state dict from torch.optim may carry."""
        for key in ("amsgrad", "maximize"):
            if group.get(key, False):
                raise RuntimeError(
                    f"{type(self).__name__}: param_groups[{index}] has {key}=True, which "
                    "this optimizer does not implement; use torch.optim for it"
                )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict (ours, torch.optim's, or DeepSpeed's), keeping state dtypes and
        CPU step counters as Note [state layout] says."""
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        super().load_state_dict(state_dict)
        ids = chain.from_iterable(g["params"] for g in saved_groups)
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for pid, p in zip(ids, params):
            if pid not in saved_state:
                continue
            state = self.state[p]
            for key, value in saved_state[pid].items():
                if key == "step":
                    state[key] = torch.tensor(float(value), dtype=torch.float32)
                elif isinstance(value, torch.Tensor) and value.is_floating_point():
                    # torch casts states to the parameter's dtype; restore ours (e.g. fp32 states
                    # for bf16 parameters) from the saved tensors.
                    state[key] = value.to(device=p.device, dtype=self._state_dtype(p), copy=True)


class CPUOnly:
    """Mixin of DeepSpeed's CPU optimizers: CPU tensors only, float32 states unless
    ``fp32_optimizer_states=False``. Put it before :class:`StepOptimizer` in the bases."""

    fp32_optimizer_states: bool = True
    #: Appended to the wrong-device error: where accelerator tensors should go instead.
    cpu_hint: str = ""

    def _state_dtype(self, param: torch.Tensor) -> torch.dtype:
        return torch.float32 if self.fp32_optimizer_states else param.dtype

    def _check_param(self, param: torch.Tensor, where: str) -> None:
        if param.device.type != "cpu":
            raise RuntimeError(
                f"{type(self).__name__}: {where} is on {param.device}; it steps CPU tensors only"
                f"{self.cpu_hint}"
            )
