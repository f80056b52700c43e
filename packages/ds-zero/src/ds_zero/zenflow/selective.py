"""The selective update: AdamW on the selected columns, every step, on the training device.

It keeps, per parameter, the fp32 values of the selected part (the ``(rows, k)`` columns of a 2-D
weight, the whole of any other parameter) with its two moments, and writes the values into the model
after each step. ``offload`` keeps the moments in host memory between steps (DeepSpeed's
``zenflow.offload``); they visit the training device for the update.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ds_zero.zenflow.adam import AdamHyper, adam_step
from ds_zero.zenflow.columns import ParamView


class SelectiveAdam:
    """State of the selected parts (Note [zenflow] in :mod:`ds_zero.zenflow`)."""

    def __init__(self, views: list[ParamView], *, offload: bool) -> None:
        self.views = views
        self.offload = offload
        self.indices: list[Tensor | None] = []
        self.values: list[Tensor] = []
        self.exp_avg: list[Tensor] = []
        self.exp_avg_sq: list[Tensor] = []
        self.step_count = 0  # not reset by a re-selection, as DeepSpeed's per-parameter step

    @property
    def active(self) -> bool:
        """Whether a selection has been made."""
        return bool(self.values)

    def reset(self, indices: list[Tensor | None], values: list[Tensor]) -> None:
        """Take a new selection with its fp32 ``values``; the moments start from zero."""
        self.indices = [None if i is None else i.to(v.param.device) for i, v in zip(indices, self.views)]
        self.values = [val.to(v.param.device) for val, v in zip(values, self.views)]
        home = [torch.device("cpu") if self.offload else v.param.device for v in self.views]
        self.exp_avg = [torch.zeros_like(val, device=d) for val, d in zip(values, home)]
        self.exp_avg_sq = [torch.zeros_like(val, device=d) for val, d in zip(values, home)]

    def restore(
        self,
        indices: list[Tensor | None],
        values: list[Tensor],
        exp_avg: list[Tensor],
        exp_avg_sq: list[Tensor],
    ) -> None:
        """Take a saved selection with its moments (a checkpoint was loaded)."""
        self.reset(indices, values)
        for mine, saved in zip(self.exp_avg + self.exp_avg_sq, exp_avg + exp_avg_sq):
            mine.copy_(saved)

    def clear(self) -> None:
        """Forget the selection (a checkpoint was loaded: the next step selects afresh)."""
        self.indices, self.values, self.exp_avg, self.exp_avg_sq = [], [], [], []

    def update(self, grads: list[Tensor], hyper: Callable[[int], AdamHyper]) -> None:
        """One AdamW step of every selected part with ``grads`` (fp32, as :func:`gather_selected` gives);
        ``hyper(group_index)`` gives each param group's settings."""
        self.step_count += 1
        by_group: dict[int, list[int]] = {}
        for i, view in enumerate(self.views):
            by_group.setdefault(view.group_index, []).append(i)
        for group_index, members in by_group.items():
            device = [self.views[i].param.device for i in members]
            m = [self.exp_avg[i].to(d) for i, d in zip(members, device)]
            v = [self.exp_avg_sq[i].to(d) for i, d in zip(members, device)]
            adam_step(
                [self.values[i] for i in members],
                [grads[i].to(d) for i, d in zip(members, device)],
                m,
                v,
                step=self.step_count,
                hp=hyper(group_index),
            )
            if self.offload:
                for i, mi, vi in zip(members, m, v):
                    if mi.data_ptr() != self.exp_avg[i].data_ptr():
                        self.exp_avg[i].copy_(mi)
                        self.exp_avg_sq[i].copy_(vi)

    @torch.no_grad()
    def write_model(self) -> None:
        """Put the selected values into the model's parameters."""
        for view, idx, value in zip(self.views, self.indices, self.values):
            data = view.param.data
            if idx is None:
                data.copy_(value)
            else:
                data[:, idx] = value.to(data.dtype)
