"""The trainer every stage is composed into: a master-weight holder, a gradient reducer, a loss scaler.

:class:`ZeroTrainer` owns the step sequence (reduce, unscale + overflow check, norm, clip, inner step,
publish, zero) and nothing stage-specific: stages differ only in the parts handed to it (Note
[stages are compositions] in :mod:`ds_zero.entry`). It is also the object clients see as
``engine.optimizer``: ``optimizer`` (the inner torch optimizer), ``param_groups``, ``state``,
``overflow``, ``state_dict()``, ``zero_grad(set_to_none=True)``.

Note: [non-finite gradients] A step whose gradients hold inf or NaN on any rank is skipped on every
rank, in every precision and at every stage (fp32 too: DeepSpeed lets NaN into fp32 weights at stages
0 and 1). The global norm the step computes anyway is the detector: it is reduced over the shard group
(stages 1-3), and at stage 0 the gradients are already all-reduced, so one non-finite element anywhere
makes every rank's norm non-finite and all ranks agree with no extra collective. Checking it costs one
host read per step, not one per tensor. A norm that overflows fp32 (gradients near 1e19) counts as
non-finite too: no update from such gradients is meaningful. ``bf16.check_grad_overflow: false`` turns
the check off (the user's explicit choice); with fp16 it is always on, as loss scaling needs it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol

import torch
from torch import Tensor, nn

import ds_comm
from ds_zero.base_optimizer import ZeROOptimizer
from ds_zero.grad_math import clip_, global_norm, is_finite, unscale_
from ds_zero.loss_scaler import StaticLossScaler
from ds_zero.low_precision_masters import fp32_step
from ds_zero.policy import ZeroPolicy
from ds_zero.replicated_state import load_replicated_state_dict, replicated_state_dict
from ds_zero.state_offload import OffloadDeviceEnum, StateOffload, StatesOffloadedError


class Masters(Protocol):
    """What the trainer needs from a master-weight holder (see :mod:`ds_zero.masters`)."""

    model_params: list[nn.Parameter]

    @property
    def holders(self) -> Sequence[Tensor]: ...  # read-only here: a list of Parameters qualifies

    def holder(self, param: Tensor) -> Tensor: ...
    def accumulate(self, param: Tensor) -> None: ...
    def grads(self) -> list[Tensor]: ...
    def publish(self) -> None: ...
    def zero_grad(self, set_to_none: bool = True) -> None: ...


class Reducer(Protocol):
    """What the trainer needs from a gradient reducer (see :mod:`ds_zero.allreduce`)."""

    sync: bool

    def mark_ready(self, holder: Tensor) -> None: ...
    def finish(self) -> None: ...


class Trainer(Protocol):
    """What the engine may use of the object :func:`ds_zero.wrap` returns, at every stage (and nothing
    else: the engine reads no stage's internals). :class:`ZeroTrainer` implements it for stages 0-2 and
    :class:`ds_zero.stage3.trainer.Stage3Trainer` for stage 3."""

    policy: ZeroPolicy
    sharded_state: bool  # each rank saves its own optimizer-state file (stages 1-3)
    gradients_arrived: bool
    overflow: bool
    # the global gradient norm where parts of the gradients differ by rank (expert or tensor-parallel
    # parameters); None: the stage's own norm. The engine sets it when it splits the model.
    norm_fn: Callable[[list[Tensor]], Tensor] | None
    # what clients read as on a torch optimizer (LR schedules write param_groups)
    param_groups: list[dict[str, Any]]
    state: Any
    defaults: dict[str, Any]
    cur_scale: float

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None: ...
    # ZenFlow's steps between column re-selections, once the engine knows its training loader's epoch
    # length (Note [zenflow] in ds_zero.zenflow); every other trainer ignores it
    def set_select_interval(self, steps: int) -> None: ...
    def scale_if_loss(self, loss: Tensor) -> Tensor: ...
    def backward(self, loss: Tensor, retain_graph: bool = False) -> None: ...
    def step(self, closure: Callable[[], Any] | None = None) -> bool: ...
    def zero_grad(self, set_to_none: bool = True) -> None: ...
    def no_sync(self) -> Any: ...
    def get_global_grad_norm(self) -> float | None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state_dict: Any, load_optimizer_states: bool = True) -> None: ...
    def refresh_fp32_params(self) -> None: ...
    def master_of(self, param: Tensor) -> Tensor: ...
    def accumulated_grad(self, param: Tensor) -> Tensor: ...
    def full_state_dict(
        self,
        *,
        dtype: torch.dtype | None = None,
        exclude_frozen_parameters: bool = False,
        rank0_only: bool = True,
    ) -> dict[str, Tensor] | None: ...
    def consolidated_16bit_state_dict(
        self, exclude_frozen_parameters: bool = False
    ) -> dict[str, Tensor] | None: ...
    def empty_partition_cache(self) -> None: ...
    def prepare_for_compile(self) -> None: ...
    def offload_states(
        self, include: Any = None, device: Any = ..., pin_memory: bool = True, non_blocking: bool = False
    ) -> None: ...
    def reload_states(self, non_blocking: bool = False) -> None: ...
    def check_states_home(self, call: str) -> None: ...
    def close(self) -> None: ...


class ZeroTrainer(ZeROOptimizer):
    """Composes ``masters``, ``reducer`` and ``scaler`` into DeepSpeed's optimizer step."""

    sharded_state = False  # stage 0: the model-states file holds the whole optimizer state

    def __init__(
        self,
        *,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        policy: ZeroPolicy,
        masters: Masters,
        reducer: Reducer,
        scaler: StaticLossScaler,
        shard_group: Any = None,
        sharded_grads: bool = False,
        swapper: Any = None,
        norm_fn: Callable[[list[Tensor]], Tensor] | None = None,
    ) -> None:
        self.module = module
        # stages 1-3 with offload_optimizer.device nvme: steps the inner optimizer with its states
        # swapped from files (ds_zero.nvme_swapper.OptimizerStateSwapper); None: states stay in memory
        self.swapper = swapper
        self.optimizer = optimizer
        self.policy = policy
        self.masters = masters
        self.reducer = reducer
        self.loss_scaler = scaler
        # Note [no process-group references]: a ProcessGroup kept alive until interpreter shutdown can
        # abort the process ("terminate called without an active exception"); the world is named by
        # None, so a trainer for the world group holds no group object at all.
        self.shard_group = shard_group
        self.sharded_grads = sharded_grads  # True: each rank holds part of the gradient (stages 1-3)
        self.norm_fn = (
            norm_fn  # the global norm when parts of the gradients differ by rank (ds_zero.group_reduction)
        )
        self.overflow = False
        self.gradients_arrived = False  # a gradient hook fired since the last step attempt
        self.offloaded = StateOffload()  # what offload_states moved (ds_zero.state_offload)
        self._global_grad_norm: Tensor | None = None
        # Note [hooks hold the trainer weakly]: a hook lives in the parameter's autograd node (C++), so a
        # strong reference to the trainer there forms a cycle Python's gc cannot see, and the trainer,
        # its shards and optimizer states would outlive every user reference.
        this = weakref.ref(self)

        def on_grad_ready(param: Tensor) -> None:
            trainer = this()
            if trainer is not None:
                trainer._on_grad_ready(param)

        self._hooks = [p.register_post_accumulate_grad_hook(on_grad_ready) for p in masters.model_params]

    # --- what clients read ---------------------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The inner optimizer's param groups (LR schedules write here)."""
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:
        """The inner optimizer's per-parameter state."""
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        """The inner optimizer's defaults."""
        return self.optimizer.defaults

    @property
    def cur_scale(self) -> float:
        """The current loss scale (1.0 without fp16)."""
        return self.loss_scaler.cur_scale

    loss_scale = cur_scale

    @property
    def dynamic_loss_scale(self) -> bool:
        """Whether the loss scale adapts to overflows."""
        return self.loss_scaler.dynamic

    def get_global_grad_norm(self) -> float | None:
        """The global gradient norm of the last applied step (before clipping)."""
        return None if self._global_grad_norm is None else float(self._global_grad_norm)

    def check_overflow(self, partition_gradients: bool = True) -> bool:
        """DeepSpeed's ZeRO ``check_overflow``: whether the gradients held now are inf/NaN on any rank.

        Collective over the data-parallel group (every rank must call it); sets ``overflow`` as
        DeepSpeed does, and also returns it. ``partition_gradients`` is accepted for DeepSpeed's signature."""
        from ds_zero.param_access import gradients_overflow

        self.overflow = gradients_overflow(self)
        return self.overflow

    # --- backward ------------------------------------------------------------------------------------
    def _on_grad_ready(self, param: Tensor) -> None:
        self.gradients_arrived = True
        self.masters.accumulate(param)
        self.reducer.mark_ready(self.masters.holder(param))

    def scale_if_loss(self, loss: Tensor) -> Tensor:
        """``loss`` times the loss scale (what backward differentiates)."""
        scale = self.loss_scaler.cur_scale
        return loss * scale if scale != 1.0 else loss

    def backward(self, loss: Tensor, retain_graph: bool = False) -> None:
        """Backward of the scaled loss; gradients accumulate, and are reduced at the boundary."""
        self.check_states_home("backward")
        self.scale_if_loss(loss).backward(retain_graph=retain_graph)

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        """Whether the next backward completes the accumulation (and so communicates)."""
        self.reducer.sync = bool(is_boundary)

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside accumulate locally and never communicate."""
        previous = self.reducer.sync
        self.reducer.sync = False
        try:
            yield
        finally:
            self.reducer.sync = previous

    # --- step ----------------------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> bool:
        """Reduce, unscale, check overflow, clip, step and publish. Returns whether the step was applied."""
        if closure is not None:
            raise ValueError("the engine optimizer does not take a closure")
        self.check_states_home("step")
        self.reducer.finish()
        grads = self.masters.grads()
        scale = self.loss_scaler.cur_scale
        if scale != 1.0:
            unscale_(grads, 1.0 / scale)
        norm = (
            self.norm_fn(grads)
            if self.norm_fn is not None
            else global_norm(grads, group=self.shard_group, sharded=self.sharded_grads)
        )
        overflow = (self.policy.check_overflow or scale != 1.0) and not is_finite(
            norm
        )  # Note [non-finite gradients]
        self.overflow = overflow
        if overflow:
            self._finish_step(applied=False)
            return False
        if self.policy.clip_grad > 0:
            clip_(grads, self.policy.clip_grad, norm)
        mp = self.policy.mixed_precision
        with fp32_step(self.optimizer) if mp.master_dtype != mp.optimizer_state_dtype else nullcontext():
            self._optimizer_step()  # Note [low-precision masters]
        self.masters.publish()
        self._global_grad_norm = norm
        self._finish_step(applied=True)
        return True

    def _optimizer_step(self) -> None:
        """The inner optimizer's step, through the NVMe state swapper when there is one (stage 3 with
        parameters on NVMe runs it one unit at a time)."""
        (self.swapper.step if self.swapper is not None else self.optimizer.step)()

    def _finish_step(self, *, applied: bool) -> None:
        self.gradients_arrived = False
        self.masters.zero_grad(set_to_none=True)
        for p in self.masters.model_params:
            p.grad = None
        self.loss_scaler.update(not applied)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the accumulated gradients (model and master)."""
        self.masters.zero_grad(set_to_none)
        for p in self.masters.model_params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    # --- moving states off the accelerator (ds_zero.state_offload) -----------------------------------
    def offload_states(
        self,
        include: Any = None,
        device: Any = OffloadDeviceEnum.cpu,
        pin_memory: bool = True,
        non_blocking: bool = False,
    ) -> None:
        """Move the named states (all by default) to host memory until :meth:`reload_states`."""
        self.offloaded.offload(
            self, include, torch.device(OffloadDeviceEnum(device).value), pin_memory, non_blocking
        )

    def reload_states(self, non_blocking: bool = False) -> None:
        """Put every offloaded state back on the device it came from."""
        self.offloaded.reload(non_blocking)

    def check_states_home(self, call: str) -> None:
        """Refuse to train while states are offloaded (they would be read from the wrong place)."""
        if self.offloaded.active:
            kinds = ", ".join(sorted(k.value for k in self.offloaded.kinds))
            raise StatesOffloadedError(
                f"{call}() while states are offloaded ({kinds}): call engine.reload_states() first"
            )

    # --- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This trainer's state in the slice format every stage shares (:mod:`ds_zero.sharded_state`):
        each parameter's fp32 value and optimizer state as one whole-parameter slice, plus the loss
        scaler, so a stage-0 checkpoint loads at any stage and world size. Tensors and plain values only."""
        state = replicated_state_dict(self)
        state["loss_scaler"] = self.loss_scaler.state_dict()
        state["dynamic_loss_scale"] = self.loss_scaler.dynamic
        state["overflow"] = self.overflow
        return state

    def load_state_dict(self, state_dict: Any, load_optimizer_states: bool = True) -> None:
        """Load slices saved at any stage and world size: one rank's dict, or a list of every saving
        rank's. Without ``load_optimizer_states`` only the fp32 master values are taken."""
        shards = state_dict if isinstance(state_dict, list) else [state_dict]
        load_replicated_state_dict(self, shards, load_optimizer_states=load_optimizer_states)
        if shards[0].get("loss_scaler") is not None:
            self.loss_scaler.load_state_dict(shards[0]["loss_scaler"])

    def full_state_dict(
        self,
        *,
        dtype: torch.dtype | None = None,
        exclude_frozen_parameters: bool = False,
        rank0_only: bool = True,
    ) -> dict[str, Tensor] | None:
        """The model's state dict (every rank holds it whole below stage 3), in ``dtype`` if given, on the
        CPU; with ``rank0_only`` other ranks get None, as at stage 3."""
        if rank0_only and ds_comm.get_rank() != 0:
            return None
        frozen = (
            {n for n, p in self.module.named_parameters() if not p.requires_grad}
            if exclude_frozen_parameters
            else set()
        )
        return {
            k: (
                v.detach().to("cpu", dtype=dtype)
                if dtype is not None and v.is_floating_point()
                else v.detach().cpu()
            )
            for k, v in self.module.state_dict().items()
            if k not in frozen
        }

    def consolidated_16bit_state_dict(
        self, exclude_frozen_parameters: bool = False
    ) -> dict[str, Tensor] | None:
        """The model's own state dict, in its training dtype: below stage 3 every rank holds (and gets) it."""
        sd = self.module.state_dict()
        if exclude_frozen_parameters:
            frozen = {n for n, p in self.module.named_parameters() if not p.requires_grad}
            sd = type(sd)((k, v) for k, v in sd.items() if k not in frozen)
        return sd

    def empty_partition_cache(self) -> None:
        """Nothing is gathered below stage 3."""

    def master_of(self, param: Tensor) -> Tensor:
        """The tensor the optimizer steps for model parameter ``param`` (its optimizer-state key)."""
        return self.masters.holder(param)

    def accumulated_grad(self, param: Tensor) -> Tensor:
        """Where ``param``'s gradient accumulates until the step (made zero if it has none yet): a caller
        may reduce it in place before the step (the pipeline's tied weights)."""
        holder = self.masters.holder(param)
        if holder.grad is None:
            holder.grad = torch.zeros_like(holder)
        return holder.grad

    def prepare_for_compile(self) -> None:
        """Nothing to prepare below stage 3 (``engine.compile``)."""

    def refresh_fp32_params(self) -> None:
        """Re-take fp32 masters from the model's weights (after a weights-only load)."""
        refresh = getattr(self.masters, "refresh_from_model", None)
        if refresh is not None:
            refresh()

    def states_resident(self) -> Any:
        """A context inside which every optimizer state is in memory (NVMe offload swaps them in)."""
        return self.swapper.resident() if self.swapper is not None else nullcontext()

    def set_select_interval(self, steps: int) -> None:
        """Only ZenFlow selects columns (:class:`ds_zero.zenflow.trainer.ZenFlowTrainer`): nothing to do."""

    def close(self) -> None:
        """Remove the gradient hooks (the trainer stops reacting to backward); delete NVMe swap files."""
        if self.swapper is not None:
            self.swapper.close()
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
