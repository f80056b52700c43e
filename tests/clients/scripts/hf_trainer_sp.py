"""Hugging Face ``Trainer`` with Ulysses sequence parallelism through Accelerate, as users run it:

    deepspeed --num_gpus 2 hf_trainer_sp.py --stage 3 --output_dir out [--resume_from_checkpoint ...]

``TrainingArguments(parallelism_config=ParallelismConfig(sp_backend="deepspeed", sp_size=2, ...))`` is
HF's documented switch (Accelerate's ALST integration): Accelerate calls
``UlyssesSPAttentionHF.register_with_transformers``, hands the mpu to ``deepspeed.initialize`` and
wraps the data loader in ``UlyssesSPDataLoaderAdapter``; the Trainer computes the loss with
``deepspeed_sp_compute_loss``. Nothing DeepSpeed-specific is called here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _common  # noqa: E402
import torch  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

SEQ = 16


class PositionedTokens(torch.utils.data.Dataset):
    """Token sequences with the labels and position_ids Ulysses needs (position_ids survive sharding).

    Every sample is the same sequence, so which batch a step draws does not matter: a resumed run must
    reproduce the saved run's later losses from the restored weights and optimizer alone. (Resuming
    mid-epoch cannot skip batches with sequence parallelism: Accelerate's ``skip_first_batches``
    rebuilds a plain loader from the wrapped one and would drop the sequence sharding, with DeepSpeed's
    adapter as with this one; the run sets ``ignore_data_skip``.)"""

    def __init__(self, n: int = 64) -> None:
        self.base = _common.TokenDataset(n)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.base[0]
        return {"input_ids": item["input_ids"], "labels": item["labels"], "position_ids": torch.arange(SEQ)}


class RecordingTrainer(Trainer):
    """Remembers each micro-batch's loss (the user's own subclass)."""

    losses: list[float]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
        return loss


def tiny_llama_sdpa() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=_common.VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=SEQ,
            attn_implementation="sdpa",
        )
    )


def main() -> None:
    from accelerate.parallelism_config import ParallelismConfig
    from accelerate.utils import DeepSpeedSequenceParallelConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--resume_from_checkpoint", default=None)
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args()

    _common.stand_in_for_accelerator()
    config_path = Path(args.output_dir) / "ds_config.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(
        json.dumps(
            {
                "train_batch_size": "auto",
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
                "steps_per_print": float("inf"),
                "zero_optimization": _common.zero_config(args.stage, auto=True),
                "zero_allow_untested_optimizer": True,
            }
        )
    )
    parallelism = ParallelismConfig(
        sp_backend="deepspeed",
        sp_size=2,
        sp_handler=DeepSpeedSequenceParallelConfig(
            sp_seq_length=SEQ, sp_seq_length_is_variable=False, sp_attn_implementation="sdpa"
        ),
    )
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        deepspeed=str(config_path),
        parallelism_config=parallelism,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=5e-3,
        max_steps=6,
        save_steps=3,
        save_strategy="steps",
        logging_steps=1,
        report_to=[],
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        ignore_data_skip=True,
    )
    trainer = RecordingTrainer(model=tiny_llama_sdpa(), args=training_args, train_dataset=PositionedTokens())
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
            "sp": engine.sequence_parallel_size,
            "seq_dp": engine.seq_dp_world_size,
            "partitioned_params": _common.partitioned_params(engine.module),
        },
    )


if __name__ == "__main__":
    main()
