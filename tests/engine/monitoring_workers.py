"""Rank functions for the monitoring tests: a real run with every monitor on, and the communication log
of one ZeRO-2 optimizer step. Importable by name so spawned ranks find them."""

from __future__ import annotations

import os

import engine_workers as w
import torch

import deepspeed


def train_with_monitors(out: str, steps: int) -> dict:
    """``steps`` optimizer steps with TensorBoard, CSV, W&B (offline) and Comet (offline) on; rank 0 writes."""
    os.environ.update(
        {
            "WANDB_MODE": "offline",
            "WANDB_DIR": out,
            "WANDB_SILENT": "true",
            "COMET_OFFLINE_DIRECTORY": os.path.join(out, "comet"),
        }
    )
    world = deepspeed.comm.get_world_size()
    cfg = w.config(
        world,
        "adamw",
        stage=2,
        steps_per_print=2,
        wall_clock_breakdown=True,
        memory_breakdown=True,
        tensorboard={"enabled": True, "output_path": os.path.join(out, "tb"), "job_name": "run"},
        csv_monitor={"enabled": True, "output_path": os.path.join(out, "csv"), "job_name": "run"},
        wandb={"enabled": True, "project": "ds-monitor-test", "group": "two-ranks"},
        comet={
            "enabled": True,
            "online": False,
            "project": "ds-monitor-test",
            "samples_log_interval": w.GLOBAL,
        },
    )
    engine, *_ = deepspeed.initialize(model=w.make_model(), config=cfg)
    lrs = []
    for _ in range(steps):
        w._train(engine, 1, world)
        lrs.append(engine.get_lr()[0])
    engine.monitor.write_events([("Client/accuracy", 0.75, engine.global_samples)])
    result = {
        "lrs": lrs,
        "samples": engine.global_samples,
        "has_monitors": bool(engine.monitor.monitors),
        "timers": engine.get_wall_clock_timers(),
    }
    engine.destroy()  # finishes the W&B run and writes the Comet archive
    return result


def one_step_comm_log() -> tuple[int, int, int, dict]:
    """Collective bytes per op in one ZeRO-2 optimizer step (``comms_logger`` on), with the shard sizes."""
    world = deepspeed.comm.get_world_size()
    cfg = w.config(world, "adamw", stage=2, comms_logger={"enabled": True, "prof_all": True})
    engine, *_ = deepspeed.initialize(model=w.make_model(), config=cfg)
    x, y = w.global_batch(0)
    rank, gas = deepspeed.comm.get_rank(), engine.gradient_accumulation_steps()
    deepspeed.comm.comms_log.clear()  # count only the step, not initialize's broadcasts
    for k in range(gas):
        mine = slice((k * world + rank) * w.MICRO, (k * world + rank + 1) * w.MICRO)
        engine.backward(torch.nn.functional.cross_entropy(engine(x[mine]), y[mine]))
        engine.step()
    stats = deepspeed.comm.log_summary(return_dict=True)["summary"]
    deepspeed.comm.configure(enabled=False)
    padded = sum(u.padded_numel for u in engine.optimizer.masters.units)
    totals = {
        op: {
            "count": sum(r["count"] for r in rows.values()),
            "bytes": sum(size * r["count"] for size, r in rows.items()),
        }
        for op, rows in stats.items()
    }
    return padded, len(engine.optimizer.masters.units), gas, totals
