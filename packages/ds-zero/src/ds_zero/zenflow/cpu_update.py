"""The CPU side of ZenFlow: gradient accumulators and the Adam step of the fp32 master shards.

The step reads and writes the inner optimizer's own state (``step``, ``exp_avg``, ``exp_avg_sq`` per
master, the layout torch's Adam and ds_kernels' Adam share), so checkpoints save it as usual; the
arithmetic is :func:`ds_zero.zenflow.adam.adam_step`, told the ZenFlow step number.

Note: [overlapped CPU step] With ``overlap_step`` the step runs on one background thread. Nothing the
thread touches (the masters, their optimizer state, the accumulator it was handed) is read or written
by the training thread until :meth:`CpuUpdate.wait` has joined it; training accumulates into the other
of two buffers meanwhile. Collectives stay on the training thread: the clipping norm is taken before
the step is submitted, and the all-gather that publishes it runs after the join.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch import Tensor

from ds_zero.zenflow.adam import AdamHyper, adam_step, hyper_of


def is_adam(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` is an Adam whose state ZenFlow's CPU step can drive (DeepSpeed's ZenFlow
    steps with its own CPU Adam whatever Adam type the config names)."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) or hasattr(optimizer, "adam_w_mode")


def decoupled_decay(optimizer: torch.optim.Optimizer, group: dict) -> bool:
    """Whether ``optimizer`` decays weights AdamW's way for ``group``."""
    if isinstance(optimizer, torch.optim.AdamW):
        return True
    if hasattr(optimizer, "adam_w_mode"):
        return bool(optimizer.adam_w_mode)
    return bool(group.get("decoupled_weight_decay", False))


class CpuUpdate:
    """Accumulates gradient shards and steps the masters with them (Note [overlapped CPU step])."""

    def __init__(self, optimizer: torch.optim.Optimizer, masters: list[Tensor], *, overlap: bool) -> None:
        self.optimizer = optimizer
        self.masters = masters
        self.overlap = overlap
        self.buffers = [
            [torch.zeros_like(m, dtype=torch.float32) for m in masters] for _ in range(1 + overlap)
        ]
        self.current = 0  # the buffer training accumulates into
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zenflow-cpu") if overlap else None
        self._pending: Future[None] | None = None
        self._pending_buffer = 0
        self.landed = False

    @property
    def accumulated(self) -> list[Tensor]:
        """The buffer this interval's gradients go into."""
        return self.buffers[self.current]

    def accumulate(self, grads: list[Tensor]) -> None:
        """Add this step's gradient shards (fp32, on the masters' device)."""
        torch._foreach_add_(self.accumulated, grads)

    def step_now(self, grads: list[Tensor], *, step: int) -> None:
        """A synchronous step of the masters with ``grads`` (warm-up, or without ``overlap_step``)."""
        self.wait()
        self._step(grads, step, self._hypers())

    def submit(self, *, step: int) -> None:
        """Step with the accumulated buffer: now, or on the background thread with ``overlap_step``
        (training then accumulates into the other buffer). A step already running is waited for first."""
        self.wait()
        grads = self.accumulated
        if self._pool is None:
            self._step(grads, step, self._hypers())
            torch._foreach_zero_(grads)
            return
        # the settings are read now: the LR schedule may change them while the thread runs
        self._pending = self._pool.submit(self._step, grads, step, self._hypers())
        self._pending_buffer = self.current
        self.current ^= 1

    @property
    def running(self) -> bool:
        """Whether a submitted step has not been waited for yet."""
        return self._pending is not None

    def wait(self) -> None:
        """Join the running step (re-raising its error) and zero its buffer; its result is then
        ``landed`` until :meth:`take_landed` (the trainer publishes it at the next boundary)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        pending.result()
        torch._foreach_zero_(self.buffers[self._pending_buffer])
        self.landed = True

    def take_landed(self) -> bool:
        """Whether an overlapped step finished since the last call (and so awaits publishing)."""
        landed, self.landed = self.landed, False
        return landed

    def close(self) -> None:
        """Finish the running step and stop the thread."""
        self.wait()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _hypers(self) -> list[AdamHyper]:
        return [
            hyper_of(group, decoupled=decoupled_decay(self.optimizer, group))
            for group in self.optimizer.param_groups
        ]

    @torch.no_grad()
    def _step(self, grads: list[Tensor], step: int, hypers: list[AdamHyper]) -> None:
        grad_of = {id(m): g for m, g in zip(self.masters, grads)}
        for group, hp in zip(self.optimizer.param_groups, hypers):
            params = [p for p in group["params"] if id(p) in grad_of]
            states = [self._state(p) for p in params]
            for s in states:
                s["step"] = torch.tensor(float(step), dtype=torch.float32)
            adam_step(
                params,
                [grad_of[id(p)] for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                step=step,
                hp=hp,
            )

    def _state(self, master: Tensor) -> dict:
        state = self.optimizer.state[master]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(master, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(master, dtype=torch.float32)
        return state
