"""Accelerate with a ``DeepSpeedPlugin``, as users write it, launched with

    accelerate launch --use_deepspeed --num_processes 2 accelerate_train.py --stage 2 --output_dir out [--resume]

The script is plain Accelerate: ``prepare``, ``accumulate``, ``backward``, ``save_state``/``load_state``.
Accelerate drives ``deepspeed.initialize`` (``config_params=``), the engine's step and its checkpoints.
A first run trains 6 optimizer steps and saves its state after step 3; a ``--resume`` run loads that
state and trains steps 4-6. Each micro-batch's loss is recorded per rank.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import _common  # noqa: E402
import torch  # noqa: E402
from accelerate import Accelerator, DeepSpeedPlugin  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402

from deepspeed.utils import get_z3_leaf_modules  # noqa: E402

STEPS, SAVE_AFTER, ACCUMULATION = 6, 3, 2


def ds_config(stage: int, *, offload_optimizer: bool) -> dict:
    """The DeepSpeed config handed to the plugin; Accelerate fills the "auto" batch sizes from the loader."""
    zero = _common.zero_config(stage, offload_optimizer=offload_optimizer)
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = 0  # partition even this small model's parameters
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": ACCUMULATION,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", type=int, required=True)
    parser.add_argument("--offload_optimizer", action="store_true")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    _common.stand_in_for_accelerator()
    set_seed(0)
    # At stage 3, name a leaf class the way MoE users do: Accelerate calls deepspeed.utils.set_z3_leaf_modules
    plugin = DeepSpeedPlugin(
        hf_ds_config=ds_config(args.stage, offload_optimizer=args.offload_optimizer),
        transformer_moe_cls_names="LlamaMLP" if args.stage == 3 else None,
    )
    accelerator = Accelerator(deepspeed_plugin=plugin)
    model = _common.tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 3))
    loader = torch.utils.data.DataLoader(_common.TokenDataset(), batch_size=2, shuffle=False)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    checkpoint = Path(args.output_dir) / "state_step3"
    first_step = 0
    if args.resume:
        accelerator.load_state(str(checkpoint))
        first_step = SAVE_AFTER
        loader = accelerator.skip_first_batches(loader, SAVE_AFTER * ACCUMULATION)

    losses: list[float] = []
    step = first_step
    model.train()
    for batch in loader:
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        losses.append(float(loss.detach()))
        if accelerator.sync_gradients:
            step += 1
            if step == SAVE_AFTER and not args.resume:
                accelerator.save_state(str(checkpoint))
            if step == STEPS:
                break

    engine = model
    _common.write_result(
        args.output_dir,
        args.result,
        {
            "losses": losses,
            "steps": step,
            "engine": type(engine).__name__,
            "zero_stage": engine.zero_optimization_stage(),
            "optimizer": type(engine.optimizer.optimizer).__name__,
            "lr": engine.get_lr(),
            "partitioned_params": _common.partitioned_params(engine.module),
            "leaf_modules": len(get_z3_leaf_modules(engine.module)),
        },
    )
    accelerator.end_training()


if __name__ == "__main__":
    main()
