"""The stage 1-2 trainer with ZenFlow's split update (Note [zenflow] in :mod:`ds_zero.zenflow`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ds_zero.grad_math import clip_, global_norm, is_finite, unscale_
from ds_zero.policy import ZenFlowPolicy
from ds_zero.stage12 import ShardedTrainer
from ds_zero.zenflow.adam import AdamHyper, hyper_of
from ds_zero.zenflow.columns import (
    gather_selected,
    own_selected,
    param_views,
    select_columns,
    write_selected,
)
from ds_zero.zenflow.cpu_update import CpuUpdate, is_adam
from ds_zero.zenflow.schedule import ZenFlowSchedule
from ds_zero.zenflow.selective import SelectiveAdam

ZENFLOW_KEY = "zenflow"  # the per-rank optimizer file's entry (Note [zenflow checkpoint])


class ZenFlowTrainer(ShardedTrainer):
    """A :class:`~ds_zero.stage12.ShardedTrainer` whose ``step`` is one ZenFlow step."""

    def __init__(self, *, zenflow: ZenFlowPolicy, **parts: Any) -> None:
        super().__init__(**parts)
        self._check_supported()
        self.zenflow = zenflow
        self.schedule = ZenFlowSchedule(
            warm_up=zenflow.full_warm_up_rounds,
            update_interval=zenflow.update_interval,
            select_interval=zenflow.select_interval,
        )
        self.zenflow_step = 0  # ZenFlow steps taken (skipped steps do not count)
        self.views = param_views(self.masters.units)
        self.selective = SelectiveAdam(self.views, offload=zenflow.offload)
        self.cpu = CpuUpdate(self.optimizer, list(self.masters.holders), overlap=zenflow.overlap_step)
        self._loaded: dict[str, Any] | None = None  # ZenFlow's saved state, between the two load phases
        self._loaded_shards: list[dict[str, Any]] = []  # every rank's saved dict, during a load

    def _check_supported(self) -> None:
        policy = self.policy
        if policy.offload.optimizer_device != "cpu":
            raise ValueError("zero_optimization.zenflow needs offload_optimizer.device 'cpu'")
        if policy.mixed_precision.master_dtype != torch.float32:
            raise ValueError("zero_optimization.zenflow needs fp32 master weights")
        if any(u.reduction is not None for u in self.masters.units):
            raise ValueError("zero_optimization.zenflow cannot shard expert (MoE) parameter groups")
        if not is_adam(self.optimizer):
            raise ValueError(
                f"zero_optimization.zenflow steps with Adam; the optimizer is {type(self.optimizer).__name__}"
            )
        for group in self.optimizer.param_groups:
            if group.get("amsgrad") or group.get("maximize"):
                raise ValueError("zero_optimization.zenflow does not implement Adam's amsgrad/maximize")

    def set_select_interval(self, steps: int) -> None:
        """Steps between re-selections, once the engine knows the epoch length (0: select once)."""
        if steps and steps < self.zenflow.update_interval:
            raise ValueError(
                f"zenflow: {steps} steps between selections (select_interval epochs of the training data) is "
                f"less than update_interval ({self.zenflow.update_interval})"
            )
        self.schedule.select_interval = int(steps)

    # --- the step ------------------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> bool:
        """One ZenFlow step (Note [zenflow]). Returns whether it was applied (False: non-finite gradients)."""
        if closure is not None:
            raise ValueError("the engine optimizer does not take a closure")
        self.check_states_home("step")
        self.reducer.finish()
        grads = self._shard_grads()
        scale = self.loss_scaler.cur_scale
        # DeepSpeed's engine divides the loss by update_interval (its accumulation steps under ZenFlow)
        factor = 1.0 / (scale * self.zenflow.update_interval)
        if factor != 1.0:
            unscale_(grads, factor)
        norm = global_norm(grads, group=self.shard_group, sharded=True)
        self.overflow = (self.policy.check_overflow or scale != 1.0) and not is_finite(norm)
        if self.overflow:
            self._finish_step(applied=False)
            return False
        t = self.zenflow_step
        if self.schedule.in_warm_up(t):
            clip_(grads, self.policy.clip_grad, norm)
            self.cpu.step_now(grads, step=t + 1)
            self.masters.publish()
        else:
            self._selective_step(grads, t)
        self.zenflow_step += 1
        self._global_grad_norm = norm
        self._finish_step(applied=True)
        return True

    def _selective_step(self, grads: list[Tensor], t: int) -> None:
        if self.schedule.selects(t) or not self.selective.active:
            self._select(grads)
        picked = gather_selected(self.views, grads, self.selective.indices, self.shard_group)
        self.selective.update(picked, self._hyper)
        self.selective.write_model()
        self.cpu.accumulate(grads)
        if not self.schedule.updates(t):
            return
        acc = self.cpu.accumulated
        if self.policy.clip_grad > 0:
            clip_(acc, self.policy.clip_grad, global_norm(acc, group=self.shard_group, sharded=True))
        self.cpu.wait()
        if self.cpu.take_landed():  # overlap_step: the previous interval's step lands now
            self._publish()
        self.cpu.submit(step=t + 1)
        if not self.zenflow.overlap_step:
            self._publish()

    def _select(self, grads: list[Tensor]) -> None:
        """New columns from this step's gradient; the old selection's values go back to the masters."""
        self.cpu.wait()  # Note [overlapped CPU step]: the masters are the thread's until joined
        shards = self._master_shards()
        if self.selective.active:
            write_selected(self.views, shards, self.selective.indices, self.selective.values)
        indices = select_columns(self.views, grads, self.zenflow.topk_ratio, self.shard_group)
        values = gather_selected(self.views, shards, indices, self.shard_group)
        self.selective.reset(indices, values)

    def _publish(self) -> None:
        """The masters into the model, then the selected parts over them (they own those columns)."""
        self.masters.publish()
        self.selective.write_model()

    def _hyper(self, group_index: int) -> AdamHyper:
        # the selective optimizer is AdamW whatever the CPU optimizer's mode, as DeepSpeed's
        return hyper_of(self.optimizer.param_groups[group_index], decoupled=True)

    def _master_shards(self) -> list[Tensor]:
        return [m.data for m in self.masters.holders]

    def _shard_grads(self) -> list[Tensor]:
        """This step's reduced gradient shards as new fp32 tensors on the masters' device (the masters'
        own ``.grad`` is not touched: the overlapped CPU step may be reading the masters)."""
        return [
            torch.zeros_like(m, dtype=torch.float32)
            if s is None
            else s.to(device=m.device, dtype=torch.float32, copy=True)
            for m, s in zip(self.masters.holders, self.masters.reduction.grad_shards)
        ]

    # --- gradients and state -------------------------------------------------------------------------
    def _finish_step(self, *, applied: bool) -> None:
        self.gradients_arrived = False
        self.masters.reduction.zero()
        for p in self.masters.model_params:
            p.grad = None
        self.loss_scaler.update(not applied)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop this step's gradients (the interval's accumulated sum is ZenFlow's, and stays)."""
        self.masters.reduction.zero()
        for p in self.masters.model_params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    # --- checkpoints (Note [zenflow checkpoint]) ------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The sharded state with the selected values in the masters, plus ZenFlow's own state."""
        self.cpu.wait()  # joined, not published: the model takes it at the next boundary, as without a save
        shards = self._master_shards()
        own = None
        if self.selective.active:  # no collective: a save may be any one rank's
            own = own_selected(self.views, shards, self.selective.indices)
            write_selected(self.views, shards, self.selective.indices, self.selective.values)
        try:
            state = super().state_dict()
        finally:
            if own is not None:  # the masters' own values there, so that saving changes nothing
                write_selected(self.views, shards, self.selective.indices, own)
        state[ZENFLOW_KEY] = self._zenflow_state(own)
        return state

    def _zenflow_state(self, own: list[Tensor] | None) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": self.zenflow_step,
            "landed": self.cpu.landed,
            "selective_step": self.selective.step_count,
            "selected": {},
        }
        if own is None:
            return state
        sel = self.selective
        for i, (name, idx) in enumerate(zip(self._view_names, sel.indices)):
            state["selected"][name] = {
                "indices": None if idx is None else idx.cpu(),
                "values": sel.values[i].detach().cpu().clone(),
                "exp_avg": sel.exp_avg[i].cpu().clone(),
                "exp_avg_sq": sel.exp_avg_sq[i].cpu().clone(),
                "masters": own[i].cpu(),  # this rank's elements: the ranks' sum is the whole
            }
        return state

    def _side_state(self) -> list[dict[str, Tensor]]:
        side = [{"zenflow_grad_sum": acc} for acc in self.cpu.accumulated]
        if self.cpu.landed:  # the model still shows the previous boundary: keep what it shows
            for entry, unit in zip(side, self.masters.units):
                entry["zenflow_published"] = unit.shard_view().detach().float()
        return side

    def load_state_dict(self, state_dict: Any, load_optimizer_states: bool = True) -> None:
        """Load the sharded state and, from a ZenFlow checkpoint, the selection, its moments, the
        interval's gradient sum and the schedule's position, so that the run goes on as if unbroken."""
        self.cpu.wait()
        self.cpu.take_landed()
        shards = state_dict if isinstance(state_dict, list) else [state_dict]
        self._loaded = shards[0].get(ZENFLOW_KEY) if load_optimizer_states else None
        self._loaded_shards = shards
        try:
            super().load_state_dict(state_dict, load_optimizer_states=load_optimizer_states)
        finally:
            self._loaded_shards = []

    def _load_side_state(self, side: list[dict[str, Tensor]]) -> None:
        saved, self._loaded = self._loaded, None
        for buffer in self.cpu.buffers:
            torch._foreach_zero_(buffer)
        if saved is None:  # weights only, or a checkpoint written without ZenFlow: it starts over
            self.zenflow_step, self.selective.step_count = 0, 0
            self.selective.clear()
            return
        for acc, entry in zip(self.cpu.accumulated, side):
            if "zenflow_grad_sum" in entry:
                acc.copy_(entry["zenflow_grad_sum"])
        self.zenflow_step = int(saved["step"])
        self.selective.step_count = int(saved["selective_step"])
        self._restore_selection(saved["selected"], [s[ZENFLOW_KEY]["selected"] for s in self._loaded_shards])
        landed = bool(saved["landed"]) and all("zenflow_published" in e for e in side)
        if landed:
            self._show(entry["zenflow_published"] for entry in side)
        self.selective.write_model()
        self.cpu.landed = landed

    def _restore_selection(self, selected: dict[str, Any], every_rank: list[dict[str, Any]]) -> None:
        """The selection of ``selected`` (any rank's: they agree); the masters' own values there are the
        sum over ``every_rank``'s saves (each saved its own elements, zero elsewhere)."""
        if not selected:
            self.selective.clear()
            return
        missing = [n for n in self._view_names if n not in selected]
        if missing:
            raise ValueError(f"the checkpoint's ZenFlow selection has no entry for parameter {missing[0]!r}")
        entries = [selected[n] for n in self._view_names]
        for name, view, e in zip(self._view_names, self.views, entries):
            want = (view.shape[0], len(e["indices"])) if e["indices"] is not None else tuple(view.shape)
            if tuple(e["values"].shape) != want:
                raise ValueError(
                    f"the checkpoint's ZenFlow selection of {name!r} has shape {tuple(e['values'].shape)}, "
                    f"expected {want}"
                )
        self.selective.restore(
            [e["indices"] for e in entries],
            [e["values"] for e in entries],
            [e["exp_avg"] for e in entries],
            [e["exp_avg_sq"] for e in entries],
        )
        # the masters held the selected values for the save; their own values go back
        own = [sum(saved[n]["masters"] for saved in every_rank) for n in self._view_names]
        write_selected(self.views, self._master_shards(), self.selective.indices, own)

    def _show(self, published: Any) -> None:
        """Put ``published`` (shard-shaped, one per unit) into the model, the masters untouched."""
        shards = self._master_shards()
        kept = [m.clone() for m in shards]
        for master, values in zip(shards, published):
            master.copy_(values)
        self.masters.publish()
        for master, values in zip(shards, kept):
            master.copy_(values)

    @property
    def _view_names(self) -> list[str]:
        names = self.masters.names
        return [names[slot.index] for unit in self.masters.units for slot in unit.slots]

    def close(self) -> None:
        """Stop the background CPU step, then the parent's cleanup."""
        self.cpu.close()
        super().close()
