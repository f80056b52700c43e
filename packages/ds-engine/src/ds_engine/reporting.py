"""What the engine reports after each optimizer step: the progress line, timers, monitor events.

Losses are kept as detached tensors during the step and turned into numbers only when something will
read them (a progress line or a monitor), so an unobserved run never waits on the device for them.
"""

from __future__ import annotations

from typing import Any

import torch

from ds_engine.log import get_logger

logger = get_logger()


def _mean_loss(losses: list[torch.Tensor]) -> float | None:
    if not losses:
        return None
    return float(torch.stack([loss.float().reshape(()) for loss in losses]).mean())


def report_step(engine: Any) -> None:
    """Log/monitor the optimizer step that just finished (rank 0 only writes)."""
    spp = engine.steps_per_print()
    due = spp is not None and engine.global_steps % spp == 0
    wants_loss = engine.global_rank == 0 and (spp is not None or engine.monitors)
    loss = _mean_loss(engine._losses) if wants_loss else None
    engine._losses.clear()
    progress = engine.progress
    progress.on_step(engine.train_batch_size())
    if loss is not None:
        progress.on_loss(loss)
    if engine.global_rank != 0:
        return
    scale = engine.loss_scale() if engine.fp16_enabled() else None
    if engine.monitors:
        events = [("Train/Samples/lr", engine.get_lr()[0], engine.global_samples)]
        if loss is not None:
            events.append(("Train/Samples/train_loss", loss, engine.global_samples))
        if scale is not None:
            events.append(("Train/Samples/loss_scale", scale, engine.global_samples))
        for monitor in engine.monitors:
            monitor.write(events)
    if due:
        line = progress.line(step=engine.global_steps, lr=engine.get_lr(), loss_scale=scale)
        logger.info("%s skipped=%d", line, engine.skipped_steps)
    if engine.timers is not None and (due or spp is None):
        logger.info("time (ms) per call | %s", engine.timers.summary_ms())
