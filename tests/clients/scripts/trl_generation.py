"""TRL's online generation (``unwrap_model_for_generation``) on an Accelerate-prepared ZeRO-3 engine, launched with

    deepspeed --num_gpus 2 trl_generation.py --output_dir out --result r [--generate] [--dynamo_backend eager]

A tiny Llama built from a config is prepared by Accelerate with a ZeRO-3 ``DeepSpeedPlugin`` and trained
2 optimizer steps. With ``--generate``, TRL's real ``unwrap_model_for_generation`` (gather, hooks off,
hooks back) wraps a greedy ``generate`` of a rank-specific prompt and number of new tokens; the full
weights read inside it are then loaded into a plain model, which generates the same prompt outside any
engine. Then 2 more steps train. With ``--dynamo_backend``, Accelerate compiles the engine
(``engine.compile``). The result has the losses, both generations and ``engine.is_compiled``.
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

NEW_TOKENS = (4, 7)  # per rank


def ds_config() -> dict:
    zero = _common.zero_config(3)
    zero["stage3_param_persistence_threshold"] = 0  # partition even this small model's parameters
    return {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
    }


def train(accelerator: Accelerator, model, optimizer, batches: list) -> list[float]:
    losses = []
    for batch in batches:
        loss = model(**batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def generate(model, prompt: torch.Tensor, new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            prompt,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            attention_mask=torch.ones_like(prompt),
        )
    return out[0].tolist()


def generate_like_trl(accelerator: Accelerator, model, prompt: torch.Tensor, new_tokens: int) -> dict:
    from trl.models.utils import unwrap_model_for_generation

    with unwrap_model_for_generation(model, accelerator) as unwrapped:
        tokens = generate(unwrapped, prompt, new_tokens)
        full = {k: v.detach().clone().float() for k, v in unwrapped.state_dict().items()}
    plain = _common.tiny_llama()
    plain.load_state_dict(full)
    plain.eval()
    return {
        "tokens": tokens,
        "plain_tokens": generate(plain, prompt, new_tokens),
        "full_shapes_match": all(full[k].shape == v.shape for k, v in plain.state_dict().items()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--generate", action="store_true")
    parser.add_argument("--dynamo_backend", default=None)
    parser.add_argument("--local_rank", type=int, default=-1)  # the deepspeed launcher passes it
    args = parser.parse_args()

    _common.stand_in_for_accelerator()
    set_seed(0)
    accelerator = Accelerator(
        deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds_config()), dynamo_backend=args.dynamo_backend
    )
    model = _common.tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    data = _common.TokenDataset(n=8, seed=1 + _common.rank())  # each rank its own samples
    batches = [
        {k: torch.stack([data[2 * i + j][k] for j in range(2)]) for k in ("input_ids", "labels")}
        for i in range(4)
    ]
    model.train()
    result = {
        "losses_before": train(accelerator, model, optimizer, batches[:2]),
        "compiled": model.is_compiled,
        "zero_stage": model.zero_optimization_stage(),
        "partitioned": _common.partitioned_params(model.module),
    }
    if args.generate:
        prompt = data[7]["input_ids"][: 3 + _common.rank()].unsqueeze(0)
        result.update(generate_like_trl(accelerator, model, prompt, NEW_TOKENS[_common.rank()]))
        result["prompt_len"] = prompt.shape[1]
    result["losses_after"] = train(accelerator, model, optimizer, batches[2:])
    _common.write_result(args.output_dir, args.result, result)
    accelerator.end_training()


if __name__ == "__main__":
    main()
