"""Hugging Face ``Trainer`` with a DeepSpeed config, as users run it:

    deepspeed --num_gpus 2 hf_trainer.py --stage 2 --output_dir out [--resume_from_checkpoint out/checkpoint-3]

Nothing DeepSpeed-specific is called here: ``TrainingArguments(deepspeed=<config>)`` makes the
Trainer drive ``deepspeed.initialize``, ``engine.backward/step``, ``save_checkpoint`` and
``load_checkpoint`` itself. Each micro-batch's loss is recorded per rank for the test to compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _common  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402


class RecordingTrainer(Trainer):
    """A Trainer that remembers each micro-batch's loss (the user's own subclass; DeepSpeed is untouched)."""

    losses: list[float]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
        return loss


def ds_config(stage: int, *, config_optimizer: bool) -> dict:
    """An HF-style DeepSpeed config: "auto" everywhere the Trainer fills values in."""
    config = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "steps_per_print": float("inf"),
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": _common.zero_config(stage, auto=True),
    }
    if config_optimizer:
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
        config["scheduler"] = {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto", "warmup_num_steps": "auto"},
        }
    else:
        config["zero_allow_untested_optimizer"] = True  # the Trainer's own torch AdamW
    return config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--result", required=True, help="result file name (without .rank<r>.json)")
    parser.add_argument("--max_steps", type=int, default=6)
    parser.add_argument("--save_steps", type=int, default=3)
    parser.add_argument(
        "--trainer_optimizer", action="store_true", help="no config optimizer: the Trainer's AdamW"
    )
    parser.add_argument("--resume_from_checkpoint", default=None)
    parser.add_argument("--local_rank", type=int, default=-1)  # passed by the deepspeed launcher
    args = parser.parse_args()

    _common.stand_in_for_accelerator()
    config_path = Path(args.output_dir) / f"ds_config_stage{args.stage}.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(ds_config(args.stage, config_optimizer=not args.trainer_optimizer)))

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        deepspeed=str(config_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=5e-3,
        warmup_steps=2,
        max_steps=args.max_steps,
        save_steps=args.save_steps,
        save_strategy="steps",
        logging_steps=1,
        report_to=[],
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = RecordingTrainer(
        model=_common.tiny_gpt2(), args=training_args, train_dataset=_common.TokenDataset()
    )
    trainer.losses = []
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    engine = trainer.model_wrapped
    _common.write_result(
        args.output_dir,
        args.result,
        {
            "losses": trainer.losses,
            "global_step": trainer.state.global_step,
            "engine": type(engine).__name__,
            "zero_stage": engine.zero_optimization_stage(),
            "lr": engine.get_lr(),
            "partitioned_params": _common.partitioned_params(engine.module),
        },
    )


if __name__ == "__main__":
    main()
