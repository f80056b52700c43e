"""Master weights for replicated training: what the optimizer actually steps.

* :class:`ModelMasters` (fp32 models): the optimizer steps the model's own parameters.
* :class:`Fp32Masters` (fp16/bf16 models): the optimizer steps fp32 copies. The copies are taken before
  the model is cast down, so no precision is lost at start; each micro-batch's low-precision gradient
  is added into the copy's fp32 ``.grad`` by a post-accumulate hook and released at once; after the
  step the copies are written back into the model.

Both expose the same small surface: ``holders`` (the tensors whose ``.grad`` carries the accumulated
gradient, in readiness order), ``accumulate(param)`` (the hook body), ``publish()`` and state helpers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn


def trainable_in_backward_order(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The optimizer's parameters in the order their gradients usually become ready (reverse definition)."""
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    ordered = [p for p in module.parameters() if id(p) in in_opt]
    extra = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in {id(q) for q in ordered}]
    if extra:
        raise ValueError(f"the optimizer holds {len(extra)} parameter(s) that are not part of the model")
    return [p for p in reversed(ordered) if p.requires_grad]


class ModelMasters:
    """fp32 training: the model's parameters are the master weights."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.model_params = trainable_in_backward_order(module, optimizer)
        self.holders: list[Tensor] = list(self.model_params)

    def holder(self, param: Tensor) -> Tensor:
        """Where ``param``'s accumulated gradient lives."""
        return param

    def accumulate(self, param: Tensor) -> None:
        """Autograd already accumulated into ``param.grad``."""

    def grads(self) -> list[Tensor]:
        """The gradients the optimizer will use."""
        return [p.grad for p in self.holders if p.grad is not None]

    def publish(self) -> None:
        """Nothing to copy: the optimizer updated the model in place."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) the accumulated gradients."""
        for p in self.holders:
            _clear(p, set_to_none)

    def masters(self) -> Iterator[Tensor]:
        """The stepped tensors, in optimizer group order."""
        for group in self.optimizer.param_groups:
            yield from group["params"]


class Fp32Masters(ModelMasters):
    """fp16/bf16 training: fp32 copies stepped by the optimizer, model cast to ``dtype``."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, dtype: torch.dtype) -> None:
        self.optimizer = optimizer
        self.model_params = trainable_in_backward_order(module, optimizer)
        self._master_of: dict[int, nn.Parameter] = {}
        for group in optimizer.param_groups:
            swapped = []
            for p in group["params"]:
                master = nn.Parameter(p.detach().to(torch.float32, copy=True), requires_grad=p.requires_grad)
                self._master_of[id(p)] = master
                if p in optimizer.state:  # a client optimizer that already stepped keeps its state
                    optimizer.state[master] = optimizer.state.pop(p)
                swapped.append(master)
            group["params"] = swapped
        self.all_model_params = [p for p in module.parameters() if id(p) in self._master_of]
        module.to(dtype)  # after the copies: fp32 values are kept exactly in the masters
        self.holders = [self._master_of[id(p)] for p in self.model_params]

    def holder(self, param: Tensor) -> Tensor:
        """The fp32 master of ``param``."""
        return self._master_of[id(param)]

    def accumulate(self, param: Tensor) -> None:
        """Add ``param.grad`` into its master's fp32 gradient and release the low-precision one."""
        grad = param.grad
        if grad is None:
            return
        master = self._master_of[id(param)]
        if master.grad is None:
            master.grad = grad.to(torch.float32)
        else:
            master.grad.add_(grad)
        param.grad = None

    def publish(self) -> None:
        """Write the updated fp32 masters into the low-precision model."""
        model: list[Tensor] = list(self.all_model_params)  # torch's _foreach stubs take list[Tensor]
        with torch.no_grad():
            torch._foreach_copy_(model, [self._master_of[id(p)] for p in model])

    def refresh_from_model(self) -> None:
        """Re-take the masters from the model (after loading weights without optimizer state)."""
        with torch.no_grad():
            for p in self.all_model_params:
                self._master_of[id(p)].copy_(p)


def _clear(t: Tensor, set_to_none: bool) -> None:
    if t.grad is None:
        return
    if set_to_none:
        t.grad = None
    else:
        t.grad.detach_()
        t.grad.zero_()
