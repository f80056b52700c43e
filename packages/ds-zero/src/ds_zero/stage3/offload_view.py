"""``engine.optimizer.parameter_offload``: DeepSpeed's ZeRO-3 hook owner, as online-generation clients use it.

Note: [hooks off for generation] TRL (``unwrap_model_for_generation``, on by default in GRPO, online
DPO and RLOO) generates at ZeRO-3 with::

    with deepspeed.zero.GatheredParameters(model.parameters()):
        remove_hooks(model)     # every param.ds_active_sub_modules.clear(); each forward/backward hook .remove()
        yield unwrapped_model   # generate: one forward per token, a different count on every rank
        add_hooks(model)        # parameter_offload._register_deepspeed_module(parameter_offload.module)

reading ``.module``, ``.forward_hooks``, ``.backward_hooks`` and ``._register_deepspeed_module`` on
``engine.optimizer.parameter_offload``. Here the per-forward work of stage 3 is done by two kinds of
module hooks on each shard unit: FSDP2's pre/post-forward hooks (gather the unit's shards into module
attributes, drop them again) and ours (Note [divergence]: rank agreement, forward prefetch). Inside
``GatheredParameters`` the module attributes already hold full parameters (Note [gathered views]); if
the unit hooks stayed, every token would cost an all-gather (and the agreement check would stop ranks
that generate different numbers of tokens, rightly: with FSDP2 they would hang). So
``forward_hooks`` lists one handle per such hook; ``.remove()`` takes the hook out of its module's
hook tables (keeping its place), and ``_register_deepspeed_module`` puts every removed hook back where
it was, in the same order relative to the module's other hooks, then lists fresh handles again.
``backward_hooks`` is empty: FSDP2's backward hooks are attached per forward by its pre/post-forward
hooks, so with those gone, nothing hooks the backward either.

DeepSpeed's names and what they are here: ``ds_active_sub_modules`` (the modules that currently use a
gathered parameter) is an always-empty set on each parameter, since FSDP2 tracks use per unit;
``module.ds_external_parameters()`` on every module returns ``(id, parameter)`` pairs of the parameters
registered as external to it (:mod:`ds_zero.stage3.external`); there is no ``param_coordinator``
(FSDP2's prefetch has no trace to invalidate), which TRL checks for before using it.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.hooks import RemovableHandle

from ds_zero.stage3.external import external_parameters
from ds_zero.stage3.hooks import UnitHooks
from ds_zero.stage3.sharding import OWNED, ShardedModel
from ds_zero.stage3.status import zero_param

_removals = itertools.count()  # stamps removals, so hooks go back in the reverse order they came out


def fsdp_forward_handles(unit: nn.Module) -> list[RemovableHandle]:
    """FSDP2's pre- and post-forward hook handles on ``unit`` (a module given to ``fully_shard``).

    The one place that reads FSDP2 internals: ``FSDPState._pre_forward_hook_handle`` and
    ``_post_forward_hook_handle`` (torch 2.6 - 2.13). FSDP2 has no public way to take its forward hooks
    out and put them back; ``test_offload_view`` checks these names, so a torch that renames them fails
    that test (and this function raises) rather than generation silently running collectives per token.
    """
    state = fully_shard.state(unit)  # type: ignore[attr-defined]  # added by @contract; its overloads hide it
    handles = [
        getattr(state, "_pre_forward_hook_handle", None),
        getattr(state, "_post_forward_hook_handle", None),
    ]
    found = [h for h in handles if isinstance(h, RemovableHandle)]
    if len(found) != len(handles):
        raise RuntimeError(
            "this torch's FSDP2 keeps its forward hooks elsewhere (FSDPState._pre_forward_hook_handle)"
            "; ds_zero.stage3.offload_view.fsdp_forward_handles needs updating"
        )
    return list(dict.fromkeys(found))  # a grouped fully_shard([a, b]) shares one handle


class _Slot:
    """One table entry a hook occupies: the table, the key, the value, the keys that came before it."""

    def __init__(self, table: dict[int, Any], key: int) -> None:
        self.table, self.key, self.value = table, key, table[key]
        keys = list(table)
        self.before = set(keys[: keys.index(key)])

    def put_back(self) -> None:
        table = self.table
        table[self.key] = self.value
        # Everything not before the hook originally (including hooks added since) goes after it again.
        after = [k for k in table if k not in self.before and k != self.key]
        if isinstance(table, OrderedDict):
            for k in after:
                table.move_to_end(k)
        else:
            items = list(table.items())
            table.clear()
            table.update((k, v) for k, v in items if k not in after)
            table.update((k, v) for k, v in items if k in after)


class SuspendableHook:
    """A handle whose ``remove()`` takes a module hook out but remembers where it was (:meth:`put_back`)."""

    def __init__(self, handle: RemovableHandle) -> None:
        self.handle = handle
        self._slots: list[_Slot] | None = None
        self.stamp = -1

    def _tables(self) -> list[dict[int, Any]]:
        refs = [self.handle.hooks_dict_ref, *getattr(self.handle, "extra_dict_ref", ())]
        return [t for t in (r() for r in refs) if t is not None]

    def remove(self) -> None:
        """Take the hook out of every table it is in (a second call does nothing)."""
        if self._slots is not None:
            return
        key = self.handle.id
        self._slots = [_Slot(t, key) for t in self._tables() if key in t]
        self.stamp = next(_removals)
        for slot in self._slots:
            del slot.table[key]

    def put_back(self) -> None:
        """Restore the hook at its old place (no-op unless removed)."""
        for slot in self._slots or []:
            slot.put_back()
        self._slots = None

    @property
    def removed(self) -> bool:
        return self._slots is not None


class ComputeDtypeViews:
    """The other half of taking FSDP2's pre-forward hooks out: they are what casts parameters to the compute
    dtype (``param_dtype``) as they gather. ``remove()`` puts a ``param_dtype`` copy of each full fp32 view
    that ``GatheredParameters`` placed in a module attribute (Note [gathered views]) in its place, so a
    bf16/fp16 model generates in its training dtype, as with DeepSpeed; :meth:`put_back` restores the views.
    Does nothing in fp32, or where a module attribute holds anything else (a shard, FSDP2's own copy)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        self.module, self.dtype = module, dtype
        self._swapped: list[tuple[nn.Module, str, nn.Parameter]] | None = None
        self.stamp = -1

    def remove(self) -> None:
        """Swap the compute-dtype copies in (a second call does nothing)."""
        if self._swapped is not None:
            return
        self._swapped, self.stamp = [], next(_removals)
        if self.dtype == torch.float32:
            return
        for owner in self.module.modules():
            for name, sharded in OWNED.get(owner, {}).items():
                view = owner._parameters.get(name)
                if (
                    view is None
                    or view is sharded
                    or isinstance(view, DTensor)
                    or view.dtype == self.dtype
                    or not view.is_floating_point()
                ):
                    continue
                copy = nn.Parameter(view.detach().to(self.dtype), requires_grad=view.requires_grad)
                if hasattr(view, "ds_active_sub_modules"):
                    zero_param(copy).ds_active_sub_modules = zero_param(view).ds_active_sub_modules
                owner._parameters[name] = copy
                self._swapped.append((owner, name, view))

    def put_back(self) -> None:
        """Put the full fp32 views back (no-op unless removed)."""
        for owner, name, view in self._swapped or []:
            owner._parameters[name] = view
        self._swapped = None

    @property
    def removed(self) -> bool:
        return self._swapped is not None


class ExternalParameters:
    """DeepSpeed's ``module.ds_external_parameters()``: ``(id, parameter)`` pairs registered as external.

    A small callable object rather than a bound method, so a module that carries it still pickles and
    deep-copies (``copy.deepcopy(model)``, as reference-model recipes do)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self) -> list[tuple[int, nn.Parameter]]:
        return [(id(p), p) for p in external_parameters(self.module)]


def add_deepspeed_module_attributes(module: nn.Module) -> None:
    """``ds_external_parameters()`` on every module and ``ds_active_sub_modules`` on every parameter."""
    for m in module.modules():
        if "ds_external_parameters" not in m.__dict__:
            # nn.Module.__setattr__'s stub takes tensors and modules only; any value is stored at run time
            m.ds_external_parameters = ExternalParameters(m)  # type: ignore[assignment]
        for p in m._parameters.values():
            if p is not None and not hasattr(p, "ds_active_sub_modules"):
                zero_param(p).ds_active_sub_modules = set()


class ParameterOffload:
    """DeepSpeed's ``DeepSpeedZeRoOffload`` surface over a stage-3 model (Note [hooks off for generation])."""

    def __init__(
        self, sharded: ShardedModel, hooks: UnitHooks, *, param_dtype: torch.dtype = torch.float32
    ) -> None:
        self.module = sharded.module
        self._sharded = sharded
        self._unit_hooks = hooks
        self._param_dtype = param_dtype
        self._all: list[SuspendableHook | ComputeDtypeViews] | None = None  # built on first use
        add_deepspeed_module_attributes(self.module)
        self._forward_hooks: list[SuspendableHook | ComputeDtypeViews] | None = None
        self.backward_hooks: list[SuspendableHook] = []

    def _hooks(self) -> list[SuspendableHook | ComputeDtypeViews]:
        # Collected when a client first asks, not at construction: a torch whose FSDP2 moved its hook
        # handles then fails the generation client loudly (fsdp_forward_handles) but not plain training.
        if self._all is None:
            handles: list[RemovableHandle] = []
            for unit in self._sharded.units:
                handles += fsdp_forward_handles(unit)
            handles += self._unit_hooks.handles
            handles += self._sharded.status_hooks  # Note [gathered status] in ds_zero.stage3.gathered_status
            self._all = [
                *(SuspendableHook(h) for h in handles),
                ComputeDtypeViews(self.module, self._param_dtype),
            ]
        return self._all

    @property
    def forward_hooks(self) -> list[SuspendableHook | ComputeDtypeViews]:
        """One entry per hook on the forward path; ``.remove()`` on each takes it out (Note above)."""
        if self._forward_hooks is None:
            self._forward_hooks = list(self._hooks())
        return self._forward_hooks

    @forward_hooks.setter
    def forward_hooks(self, hooks: list[Any]) -> None:
        self._forward_hooks = list(hooks)  # TRL empties the list after removing

    @property
    def hooks_removed(self) -> bool:
        """Whether any forward hook is out now."""
        return any(h.removed for h in self._all or [])

    def _register_deepspeed_module(self, module: nn.Module) -> None:
        """Put back every hook a ``remove()`` took out (DeepSpeed's name; ``module`` must be :attr:`module`)."""
        if module is not self.module:
            raise ValueError(
                "ZeRO-3: _register_deepspeed_module takes parameter_offload.module "
                "(the hooks of other modules are not this engine's)"
            )
        # Last out, first back: a slot's "before" keys are those present when its hook came out.
        for hook in sorted((h for h in self._hooks() if h.removed), key=lambda h: h.stamp, reverse=True):
            hook.put_back()
        self._forward_hooks = list(self._hooks())
        self.backward_hooks = []

    _register_hooks_recursively = (
        _register_deepspeed_module  # DeepSpeed < 0.16.4's name, which TRL also calls
    )
