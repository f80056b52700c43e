"""Train a small Llama with Accelerate and a ``DeepSpeedPlugin``:

    accelerate launch --use_deepspeed --num_processes 2 examples/clients/accelerate_train.py \\
        --ds_config examples/clients/ds_config_zero2.json --steps 200 --save_dir out/accelerate

Resume with ``--resume``: the state saved by ``accelerator.save_state`` (the DeepSpeed engine's
checkpoint, the LR schedule and the RNG states) is loaded, and training continues where it stopped.
Use ``ds_config_zero3.json`` for ZeRO stage 3; add ``"offload_optimizer": {"device": "cpu"}`` to the
config's ``zero_optimization`` to step the optimizer on the CPU (Accelerate then swaps the AdamW below
for ``deepspeed.ops.adam.DeepSpeedCPUAdam``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.utils import set_seed
from transformers import LlamaConfig, LlamaForCausalLM


def batches(vocab: int, seq_len: int, samples: int) -> torch.utils.data.TensorDataset:
    """Sequences that count upwards modulo the vocabulary from a random start: easy to learn."""
    g = torch.Generator().manual_seed(0)
    ids = (torch.randint(0, vocab, (samples, 1), generator=g) + torch.arange(seq_len)) % vocab
    return torch.utils.data.TensorDataset(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds_config", required=True, help="a DeepSpeed config JSON")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps to reach")
    parser.add_argument("--batch_size", type=int, default=8, help="per rank")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--save_dir", default="out/accelerate")
    parser.add_argument("--resume", action="store_true", help="continue from --save_dir")
    args = parser.parse_args()

    set_seed(0)
    config = json.loads(Path(args.ds_config).read_text())
    config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
    config["gradient_clipping"] = 1.0
    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=config))

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=128,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=64,
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 20))
    loader = torch.utils.data.DataLoader(batches(128, 64, 8192), batch_size=args.batch_size, shuffle=True)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    step, skip = 0, 0
    if args.resume:
        accelerator.load_state(args.save_dir)
        step = json.loads((Path(args.save_dir) / "progress.json").read_text())["step"]
        skip = step * args.gradient_accumulation_steps % len(loader)  # batches of the interrupted epoch seen
    model.train()
    while step < args.steps:
        epoch = accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for (ids,) in epoch:
            with accelerator.accumulate(model):
                loss = model(input_ids=ids, labels=ids).loss
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            if step % 50 == 0 or step == args.steps:
                accelerator.print(f"step {step} loss {loss.item():.4f}")
            if step == args.steps:
                break
    accelerator.save_state(args.save_dir)
    if accelerator.is_main_process:
        (Path(args.save_dir) / "progress.json").write_text(json.dumps({"step": step}))
    accelerator.end_training()


if __name__ == "__main__":
    main()
