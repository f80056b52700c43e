"""Rank 0's progress line every ``steps_per_print`` optimizer steps.

The TFLOP/s figure is an estimate: ``6 * parameters * tokens`` per step (forward + backward of a dense
model), where a sample's tokens are the element count of the first integer tensor passed to forward
(else 1 per sample).
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("ds_engine")


class ProgressReporter:
    """Counts samples, tokens and losses between prints, and formats the progress line."""

    def __init__(self, *, num_params: int, dp_world_size: int) -> None:
        self.num_params = num_params
        self.dp_world_size = dp_world_size
        self._t0 = time.perf_counter()
        self._steps = 0
        self._samples = 0
        self._tokens = 0
        self._losses: list[float] = []

    def on_forward(self, tokens: int) -> None:
        """A forward saw ``tokens`` tokens on this rank."""
        self._tokens += tokens

    def on_loss(self, loss: float) -> None:
        """A micro-batch's (unscaled) loss."""
        self._losses.append(loss)

    def on_step(self, samples: int) -> None:
        """An optimizer step consumed ``samples`` samples globally."""
        self._steps += 1
        self._samples += samples

    def line(self, *, step: int, lr: list[float], loss_scale: float | None) -> str:
        """The progress line; resets the counters."""
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        loss = sum(self._losses) / len(self._losses) if self._losses else float("nan")
        tflops = 6.0 * self.num_params * self._tokens * self.dp_world_size / elapsed / 1e12
        parts = [f"step={step}", f"loss={loss:.6g}", "lr=[" + ", ".join(f"{x:.6g}" for x in lr) + "]"]
        if loss_scale is not None:
            parts.append(f"loss_scale={loss_scale:g}")
        parts += [f"samples/s={self._samples / elapsed:.2f}", f"TFLOP/s~{tflops:.4f}"]
        self._t0 = time.perf_counter()
        self._steps = self._samples = self._tokens = 0
        self._losses.clear()
        return " ".join(parts)

    def mean_loss(self) -> float | None:
        """Mean loss since the last line (None if no loss was seen)."""
        return sum(self._losses) / len(self._losses) if self._losses else None


def file_progress(verb: str, path: str, nbytes: int, seconds: float) -> None:
    """One rank-0 log line per checkpoint file written or read (saving a large model takes minutes: the
    lines show it moving). Other ranks stay quiet."""
    import ds_comm

    if ds_comm.get_rank() == 0:
        logger.info("checkpoint: %s %s (%.1f MiB in %.2f s)", verb, path, nbytes / 2**20, seconds)
