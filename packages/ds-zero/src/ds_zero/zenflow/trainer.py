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
from ds_zero.zenflow.columns import gather_selected, param_views, select_columns, write_selected
from ds_zero.zenflow.cpu_update import CpuUpdate, is_adam
from ds_zero.zenflow.schedule import ZenFlowSchedule
from ds_zero.zenflow.selective import SelectiveAdam


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

    def state_dict(self) -> dict[str, Any]:
        """The sharded state, with the running CPU step finished and the selected values in the masters."""
        self._settle_masters()
        return super().state_dict()

    def load_state_dict(self, state_dict: Any, load_optimizer_states: bool = True) -> None:
        """Load, then select afresh at the next step (the selective moments are not checkpointed)."""
        self._settle_masters()
        super().load_state_dict(state_dict, load_optimizer_states=load_optimizer_states)
        self.selective.clear()
        self.cpu.take_landed()  # the loaded masters are the model's now
        for buffer in self.cpu.buffers:
            torch._foreach_zero_(buffer)

    def _settle_masters(self) -> None:
        # the running step is joined, not published: the model takes it at the next boundary as usual
        self.cpu.wait()
        if self.selective.active:
            write_selected(self.views, self._master_shards(), self.selective.indices, self.selective.values)

    def close(self) -> None:
        """Stop the background CPU step, then the parent's cleanup."""
        self.cpu.close()
        super().close()
