"""TRL's ``DPOTrainer`` at ZeRO-3 with a reference model, as users run it:

    deepspeed --num_gpus 2 trl_dpo.py --output_dir out --result dpo

Nothing DeepSpeed-specific is called here: ``DPOConfig(deepspeed=<config>)`` makes the Trainer initialize
the policy engine, and TRL's ``prepare_deepspeed`` builds the reference model's engine without an
optimizer (``deepspeed.initialize(model=ref, config=<stage 3 + TRL's dotted keys>)``, then ``eval()``).
Both models are built with ``from_config`` after the config is known, so transformers builds them under
``deepspeed.zero.Init``, as ``from_pretrained`` does at stage 3: the reference engine starts from
partitioned, empty parameters. The tokenizer, models and preference data are made here; nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _common  # noqa: E402

WORDS = [f"w{i}" for i in range(40)]


def tokenizer():
    """A word-level tokenizer over WORDS, built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )


def preferences(n: int = 32):
    """Prompts of three words; the chosen answer continues the sequence, the rejected one repeats a word."""
    from datasets import Dataset

    rows = {"prompt": [], "chosen": [], "rejected": []}
    for i in range(n):
        start = (3 * i) % (len(WORDS) - 6)
        rows["prompt"].append(" ".join(WORDS[start : start + 3]))
        rows["chosen"].append(" " + " ".join(WORDS[start + 3 : start + 6]))
        rows["rejected"].append(" " + " ".join([WORDS[start]] * 3))
    return Dataset.from_dict(rows)


def ds_config() -> dict:
    """What Accelerate's DeepSpeed plugin hands over for a ZeRO-3 YAML: "auto" for the Trainer to fill.

    The persistence threshold is the value the Trainer fills for "auto" (10 x hidden = 320), given
    explicitly because TRL builds the reference engine before the Trainer fills it (an "auto" left there
    means DeepSpeed's default, 1e5, which keeps every parameter of this tiny model whole). So the
    embeddings, the LM head and every projection are sharded in both models. TRL's fused LM head reads
    ``lm_head.weight`` inside the model's forward and checks DeepSpeed's ``ds_status``: Note [head in the
    root unit] in ds_zero.stage3.gathered_status."""
    zero = _common.zero_config(3, auto=True)
    zero["stage3_param_persistence_threshold"] = 320
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "steps_per_print": float("inf"),
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args()
    _common.stand_in_for_accelerator()

    from transformers import AutoModelForCausalLM, LlamaConfig
    from trl import DPOConfig, DPOTrainer

    tok = tokenizer()
    config = DPOConfig(
        output_dir=args.output_dir,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=4,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        deepspeed=ds_config(),
        bf16=False,
        gradient_checkpointing=False,
        seed=0,
        beta=0.1,
        max_length=16,
        disable_dropout=True,
        dataloader_num_workers=0,
    )
    model_config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )

    def build():  # under zero.Init once DPOConfig(deepspeed=<stage 3>) exists, as from_pretrained would be
        import torch

        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(model_config)

    policy, ref = build(), build()
    born_partitioned = _common.partitioned_params(ref)
    trainer = DPOTrainer(
        model=policy, ref_model=ref, args=config, train_dataset=preferences(), processing_class=tok
    )
    engine = trainer.ref_model
    ref_module = getattr(engine, "module", engine)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    _common.write_result(
        args.output_dir,
        args.result,
        {
            "ref_engine": type(engine).__name__,
            "ref_optimizer": repr(getattr(engine, "optimizer", None)),
            "ref_training": bool(ref_module.training),
            "ref_born_partitioned": born_partitioned,
            "ref_partitioned": _common.partitioned_params(ref_module),
            "ref_params": sum(1 for _ in ref_module.parameters()),
            "policy_zero_stage": trainer.model_wrapped.zero_optimization_stage(),
            "losses": [entry["loss"] for entry in logs],
            "chosen_rewards": [entry.get("rewards/chosen") for entry in logs],
            "global_step": trainer.state.global_step,
        },
    )


if __name__ == "__main__":
    main()
