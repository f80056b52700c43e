"""Train a small GPT-2 with the Hugging Face ``Trainer`` and a DeepSpeed config, as with DeepSpeed itself:

    deepspeed --num_gpus 2 examples/clients/hf_trainer.py --deepspeed examples/clients/ds_config_zero2.json \\
        --output_dir out/hf --max_steps 200 --per_device_train_batch_size 8 --save_steps 100

Resume after an interruption by adding ``--resume_from_checkpoint out/hf/checkpoint-100``. Use
``ds_config_zero3.json`` for ZeRO stage 3. The model is built from a config and the text is synthetic
(a fixed random Markov chain), so nothing is downloaded; swap in ``AutoModelForCausalLM.from_pretrained``
and a real dataset for actual work. Every TrainingArguments flag works (``--bf16``, ``--learning_rate``,
``--gradient_accumulation_steps``, ...); the Trainer fills the config's ``"auto"`` values from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GPT2Config, GPT2LMHeadModel, HfArgumentParser, Trainer, TrainingArguments


@dataclass
class ModelArguments:
    """The model and the synthetic data."""

    vocab_size: int = 256
    seq_len: int = 64
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    samples: int = 4096


class MarkovText(torch.utils.data.Dataset):
    """Token sequences from a fixed random Markov chain: there is structure to learn, nothing to download."""

    def __init__(self, args: ModelArguments, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        transitions = torch.softmax(torch.randn(args.vocab_size, args.vocab_size, generator=g) * 3, dim=-1)
        ids = torch.empty(args.samples, args.seq_len, dtype=torch.long)
        ids[:, 0] = torch.randint(0, args.vocab_size, (args.samples,), generator=g)
        for t in range(1, args.seq_len):
            ids[:, t] = torch.multinomial(transitions[ids[:, t - 1]], 1, generator=g).squeeze(1)
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    model_args, training_args = HfArgumentParser(
        (ModelArguments, TrainingArguments)
    ).parse_args_into_dataclasses()
    config = GPT2Config(
        vocab_size=model_args.vocab_size,
        n_positions=model_args.seq_len,
        n_embd=model_args.n_embd,
        n_layer=model_args.n_layer,
        n_head=model_args.n_head,
    )
    trainer = Trainer(model=GPT2LMHeadModel(config), args=training_args, train_dataset=MarkovText(model_args))
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # at ZeRO stage 3 this needs stage3_gather_16bit_weights_on_model_save: true
    if trainer.is_world_process_zero():
        print(f"final training loss {result.training_loss:.4f} after {result.global_step} steps")


if __name__ == "__main__":
    main()
