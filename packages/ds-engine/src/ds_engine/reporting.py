"""What the engine reports after each optimizer step: the progress line, timers, memory, monitor events.

Losses are kept as detached tensors during the step and turned into numbers only when something will
read them (a progress line or a monitor), so an unobserved run never waits on the device for them.
With ``wall_clock_breakdown`` the step's timers go to the monitors at every step (DeepSpeed's
``Train/Samples/elapsed_time_ms_*`` events) and their per-step means to the log every ``steps_per_print``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ds_engine.log import get_logger

if TYPE_CHECKING:
    from ds_engine.engine import DeepSpeedEngine

logger = get_logger()


def _mean_loss(losses: list[torch.Tensor]) -> float | None:
    if not losses:
        return None
    return float(torch.stack([loss.float().reshape(()) for loss in losses]).mean())


def _events(
    engine: DeepSpeedEngine, loss: float | None, scale: float | None, step_ms: dict[str, float]
) -> list[tuple]:
    samples = engine.global_samples
    events: list[tuple] = [("Train/Samples/lr", engine.get_lr()[0], samples)]
    if loss is not None:
        events.append(("Train/Samples/train_loss", loss, samples))
    if scale is not None:
        events.append(("Train/Samples/loss_scale", scale, samples))
    if step_ms:
        events += engine._walltime.monitor_events(step_ms, samples)
    return events


def report_step(engine: DeepSpeedEngine) -> None:
    """Log/monitor the optimizer step that just finished (rank 0 only writes)."""
    spp = engine.steps_per_print()
    due = spp is not None and engine.global_steps % spp == 0
    monitored = engine.monitor.enabled
    wants_loss = engine.global_rank == 0 and (spp is not None or monitored)
    loss = _mean_loss(engine._losses) if wants_loss else None
    engine._losses.clear()
    step_ms = engine._walltime.close_step()
    progress = engine.progress
    progress.on_step(engine.train_batch_size())
    if loss is not None:
        progress.on_loss(loss)
    if engine.global_rank != 0:
        return
    scale = engine.loss_scale() if engine.fp16_enabled() else None
    if monitored:
        engine.monitor.write_events(_events(engine, loss, scale, step_ms))
    if due:
        line = progress.line(step=engine.global_steps, lr=engine.get_lr(), loss_scale=scale)
        line += f" skipped={engine.skipped_steps}"
        if engine._config.memory_breakdown:
            from ds_engine.timers import SynchronizedWallClockTimer

            line += SynchronizedWallClockTimer.memory_usage()
        logger.info("%s", line)
    if engine._walltime.enabled and (due or spp is None):
        logger.info("%s", engine._walltime.summary())
