"""A user's training script, as DeepSpeed's getting-started page writes one: argparse with
``deepspeed.add_config_arguments``, ``deepspeed.initialize``, then forward/backward/step.

The autotuning tests run it through ``deepspeed --autotuning``. Test hooks (environment):
``AT_FAIL=<stage>:<micro batch>`` makes rank 1 crash in that configuration (an experiment made to fail);
``AT_RECORD=<path>`` has rank 0 write what the engine trained with when a normal run finishes.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

import deepspeed

IN, HIDDEN, OUT = 16, 256, 16


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(IN, HIDDEN),
        torch.nn.GELU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.GELU(),
        torch.nn.Linear(HIDDEN, OUT),
    )


def make_batch(micro_batch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step * 101 + int(os.environ.get("RANK", "0")))
    x = torch.randn(micro_batch, IN, generator=gen)
    return x, x.flip(-1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--steps", type=int, default=8)
    deepspeed.add_config_arguments(parser)
    args = parser.parse_args()
    model = build_model()
    engine, _, _, _ = deepspeed.initialize(args=args, model=model, model_parameters=model.parameters())
    where = f"{engine.zero_optimization_stage()}:{engine.train_micro_batch_size_per_gpu()}"
    loss = torch.zeros(())
    for step in range(args.steps * engine.gradient_accumulation_steps()):
        if os.environ.get("AT_FAIL") == where and engine.global_rank == 1:
            raise RuntimeError(f"deliberate failure at stage:micro batch {where}")
        x, y = make_batch(engine.train_micro_batch_size_per_gpu(), step)
        loss = torch.nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
    record = os.environ.get("AT_RECORD")
    if record and engine.global_rank == 0:
        with open(record, "w") as fh:
            json.dump(
                {
                    "zero_stage": engine.zero_optimization_stage(),
                    "train_micro_batch_size_per_gpu": engine.train_micro_batch_size_per_gpu(),
                    "train_batch_size": engine.train_batch_size(),
                    "global_steps": engine.global_steps,
                    "world_size": engine.world_size,
                    "loss": float(loss),
                },
                fh,
            )
    # Leave the process group explicitly, as torch recommends: one left to interpreter exit (ZeRO stages
    # 1-3 on gloo) sometimes aborts the rank with "terminate called without an active exception".
    deepspeed.comm.destroy_process_group()


if __name__ == "__main__":
    main()
