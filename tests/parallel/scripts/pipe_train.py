"""A pipeline training script in the shape of DeepSpeedExamples' training/pipeline_parallelism/train.py
(``train_pipe``): a conv net's layers (with a lambda) in a PipelineModule, ``initialize(args=...,
training_data=...)``, ``engine.train_batch()`` with no iterator; CPU-sized (32x32 inputs, local data)."""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
from torch import nn

import deepspeed
from deepspeed.pipe import PipelineModule


def small_alexnet(num_classes: int = 10) -> list:
    """AlexNet's layer order (features, avgpool, flatten, classifier) at CIFAR size."""
    features = [
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]
    classifier = [nn.Dropout(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(inplace=True), nn.Linear(64, num_classes)]
    return [*features, nn.AdaptiveAvgPool2d((4, 4)), lambda x: torch.flatten(x, 1), *classifier]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("-s", "--steps", type=int, default=3)
    parser.add_argument("-p", "--pipeline-parallel-size", type=int, default=2)
    parser.add_argument("--out", type=str, required=True)
    parser = deepspeed.add_config_arguments(parser)
    args = parser.parse_args()
    deepspeed.init_distributed()
    torch.manual_seed(1138)
    deepspeed.runtime.utils.set_random_seed(1138)
    net = PipelineModule(
        layers=small_alexnet(),
        loss_fn=torch.nn.CrossEntropyLoss(),
        num_stages=args.pipeline_parallel_size,
        partition_method="parameters",
        activation_checkpoint_interval=0,
    )
    g = torch.Generator().manual_seed(0)
    trainset = torch.utils.data.TensorDataset(
        torch.randn(512, 3, 32, 32, generator=g), torch.randint(0, 10, (512,), generator=g)
    )
    engine, _, _, _ = deepspeed.initialize(
        args=args,
        model=net,
        model_parameters=[p for p in net.parameters() if p.requires_grad],
        training_data=trainset,
    )
    losses = [float(engine.train_batch()) for _ in range(args.steps)]
    with open(os.path.join(args.out, f"rank{dist.get_rank()}.json"), "w", encoding="utf-8") as fh:
        json.dump(
            {
                "losses": losses,
                "stage": engine.stage_id,
                "parts": net.parts,
                "gas": engine.gradient_accumulation_steps(),
                "steps": engine.global_steps,
            },
            fh,
        )


if __name__ == "__main__":
    main()
