"""The order of the training calls, and what a run of skipped steps means.

Note: [call order] DeepSpeed's contract is one ``backward`` and one ``step`` per micro-batch, the
optimizer stepping only at an accumulation boundary. Two misuses silently damage a run, so they are
errors here, named after the call:

* ``step()`` at a boundary with no gradients produced since the previous optimizer step: the
  optimizer would step on zero gradients (Adam's moments still move the weights);
* a second ``backward()`` after one at a boundary, with no ``step()`` between: the first backward
  already reduced its gradients across ranks, so the second would mix averaged and local gradients.

A backward off a boundary with no ``step()`` after it is allowed: Accelerate accumulates that way
(``set_gradient_accumulation_boundary(False)``, backward, and ``step()`` only at the boundary).
Gradients that the client produced itself (``engine.scale(loss).backward()``) count as a backward.

Note: [skipped steps] A step whose gradients held inf/NaN is skipped on every rank (Note [non-finite
gradients] in :mod:`ds_zero.trainer`); the engine counts it, logs it once (rank 0), and stops the run
with :class:`NonFiniteGradientsError` after ``max_consecutive_skipped_steps`` in a row, since a run
that keeps skipping is not training.
"""

from __future__ import annotations

import enum
import logging

logger = logging.getLogger("ds_engine")


class TrainingCallError(RuntimeError):
    """A training call came out of order (Note [call order])."""


class NonFiniteGradientsError(RuntimeError):
    """Too many optimizer steps in a row were skipped for inf/NaN gradients (Note [skipped steps])."""


class CallState(enum.Enum):
    """Where the engine is between two optimizer steps."""

    NO_GRADIENTS = "no gradients since the last optimizer step"
    ACCUMULATING = "gradients accumulating off a boundary"
    REDUCED = "backward ran at a boundary; step() must come next"


class StepGuard:
    """Checks the order of ``backward``/``step`` calls and counts skipped steps (see the module doc)."""

    def __init__(self, *, max_consecutive_skips: int, rank: int) -> None:
        self.state = CallState.NO_GRADIENTS
        self.max_consecutive_skips = max_consecutive_skips
        self.skips_in_a_row = 0
        self._rank = rank

    def on_backward(self, *, at_boundary: bool) -> None:
        """Before a backward: refuse a second one after a boundary backward (Note [call order])."""
        if self.state is CallState.REDUCED:
            raise TrainingCallError(
                "engine.backward() was called twice at a gradient-accumulation boundary without engine.step() "
                "between them: the first already reduced its gradients across ranks. Call engine.step() after "
                "every engine.backward(), or add the losses and call backward once"
            )
        self.state = CallState.REDUCED if at_boundary else CallState.ACCUMULATING

    def on_client_backward(self) -> None:
        """The client runs backward itself (``engine.scale(loss).backward()``): gradients will arrive."""
        if self.state is CallState.NO_GRADIENTS:
            self.state = CallState.ACCUMULATING

    def on_step(self, *, at_boundary: bool, gradients_arrived: bool) -> None:
        """Before ``step()``: refuse an optimizer step with no gradients since the last one."""
        if not at_boundary:
            return
        if self.state is CallState.NO_GRADIENTS and not gradients_arrived:
            raise TrainingCallError(
                "engine.step() was called without engine.backward() since the last optimizer step: the "
                "optimizer would step on zero gradients and still change the weights. Call "
                "engine.backward(loss) before engine.step()"
            )

    def after_step(self, *, at_boundary: bool, applied: bool, global_step: int, loss_scaled: bool) -> None:
        """After ``step()``: a boundary resets the call order; a skipped step is logged and counted."""
        if not at_boundary:
            return
        self.state = CallState.NO_GRADIENTS
        if applied:
            self.skips_in_a_row = 0
            return
        self.skips_in_a_row += 1
        if self._rank == 0 and not loss_scaled:  # the fp16 loss scaler logs its own overflows
            logger.warning(
                "step %d skipped: the gradients hold inf or NaN on at least one rank; weights, optimizer "
                "state and LR schedule are unchanged (%d skipped in a row)",
                global_step,
                self.skips_in_a_row,
            )
        limit = self.max_consecutive_skips
        if limit and self.skips_in_a_row >= limit:
            raise NonFiniteGradientsError(
                f"{self.skips_in_a_row} optimizer steps in a row were skipped because the gradients held inf or "
                f"NaN (max_consecutive_skipped_steps={limit}): the model or the data produce non-finite values; "
                "lower the learning rate, check the inputs, or raise the limit in the config"
            )
