"""Hugging Face ``Trainer`` with DeepSpeed AutoTP, as users run it:

    deepspeed --num_gpus 2 hf_trainer_tp.py --stage 2 --output_dir out [--resume_from_checkpoint ...]

The DeepSpeed config carries ``"tensor_parallel": {"autotp_size": 2}``: the Trainer calls
``deepspeed.tp_model_init`` itself, Accelerate gives both ranks of the tensor-parallel group the same
batches and saves the model through ``_consolidated_16bit_state_dict``. Nothing DeepSpeed-specific is
called here. After training every rank computes logits of a fixed probe batch with the trained (split)
model, for the test to compare with the saved model loaded into a plain one.
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


class RecordingTrainer(Trainer):
    """Remembers each micro-batch's loss (the user's own subclass)."""

    losses: list[float]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        if not self.losses:
            self.first_input_ids = inputs["input_ids"].tolist()
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.losses.append(float((loss[0] if isinstance(loss, tuple) else loss).detach()))
        return loss


def tiny_llama() -> torch.nn.Module:
    """Hidden 32, 4 heads, 2 KV heads, 2 layers, vocab 64 (seeded)."""
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
            max_position_embeddings=_common.SEQ,
            tie_word_embeddings=False,
        )
    )


def tiny_phi3() -> torch.nn.Module:
    """Phi-3 (fused ``qkv_proj`` with GQA, fused ``gate_up_proj``): hidden 32, 4 heads, 2 KV heads, 2 layers."""
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    return Phi3ForCausalLM(
        Phi3Config(
            vocab_size=_common.VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=_common.SEQ,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
    )


def probe() -> torch.Tensor:
    """A fixed batch of token ids the test also feeds the saved model."""
    return _common.TokenDataset(4, seed=9).ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--resume_from_checkpoint", default=None)
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--model", choices=["llama", "phi3"], default="llama")
    args = parser.parse_args()

    _common.stand_in_for_accelerator()
    config_path = Path(args.output_dir) / "ds_config.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    zero = _common.zero_config(args.stage)
    zero["stage3_gather_16bit_weights_on_model_save"] = True  # Accelerate's condition for saving TP weights
    config_path.write_text(
        json.dumps(
            {
                "train_batch_size": "auto",
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
                "steps_per_print": float("inf"),
                "zero_optimization": zero,
                "tensor_parallel": {"autotp_size": 2},
            }
        )
    )
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        deepspeed=str(config_path),
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
    )
    model = tiny_phi3() if args.model == "phi3" else tiny_llama()
    trainer = RecordingTrainer(model=model, args=training_args, train_dataset=_common.TokenDataset(32))
    trainer.losses = []
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(str(Path(args.output_dir) / "final"))
    engine = trainer.model_wrapped
    with torch.no_grad():
        logits = engine.module(input_ids=probe()).logits
    attn = engine.module.model.layers[0].self_attn
    q = attn.qkv_proj.weight if args.model == "phi3" else attn.q_proj.weight
    _common.write_result(
        args.output_dir,
        args.result,
        {
            "losses": trainer.losses,
            "global_step": trainer.state.global_step,
            "engine": type(engine).__name__,
            "zero_stage": engine.zero_optimization_stage(),
            "tp": engine.mp_world_size,
            "dp": engine.dp_world_size,
            "train_batch_size": engine.train_batch_size(),
            "first_input_ids": trainer.first_input_ids,
            "q_proj_shape": list(q.shape),
            "logits": logits.tolist(),
        },
    )


if __name__ == "__main__":
    main()
