"""Rank functions and the single-process reference for the AutoTP tests (tiny HF Llama).

Every run trains the same tiny Llama on the same global batches: step ``k``'s batch has ``MICRO`` samples
per data-parallel rank; data-parallel rank ``d`` takes samples ``[d * MICRO, (d + 1) * MICRO)`` and every
rank of its tensor-parallel group takes the same samples. The reference is one process training the whole
model on the whole global batch (tensor parallelism 1).
"""

from __future__ import annotations

from typing import Any

import torch

import deepspeed

MICRO, SEQ, VOCAB, LR, CLIP = 2, 12, 64, 0.5, 0.5
# SGD is linear in the gradient, so an error in averaging, in the all-reduces or in the norm shows in the
# weights; the clipping threshold is below the gradient norm, so the norm over the split model matters.


def make_model(seed: int = 0, heads: int = 4, kv_heads: int = 2) -> torch.nn.Module:
    """Tiny Llama: hidden 32, 4 heads, 2 KV heads, 2 layers, vocab 64 (fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        attn_implementation="eager",
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).float()


def config(stage: int, dp: int, tp: int) -> dict[str, Any]:
    """The DeepSpeed config of a run with ``dp`` data-parallel and ``tp`` tensor-parallel ranks."""
    return {
        # DeepSpeed 0.19 counts tensor-parallel ranks in train_batch_size (micro x accumulation x world)
        "train_micro_batch_size_per_gpu": MICRO,
        "train_batch_size": MICRO * dp * tp,
        "optimizer": {"type": "SGD", "params": {"lr": LR, "momentum": 0.9, "weight_decay": 0.01}},
        "zero_optimization": {"stage": stage},
        "gradient_clipping": CLIP,
        "tensor_parallel": {"autotp_size": tp},
    }


def global_batch(step: int, dp: int) -> dict[str, torch.Tensor]:
    """Step ``step``'s samples for ``dp`` data-parallel ranks (each row has the same number of labels)."""
    gen = torch.Generator().manual_seed(1009 * step + 3)
    ids = torch.randint(0, VOCAB, (MICRO * dp, SEQ), generator=gen)
    labels = ids.clone()
    labels[:, :3] = -100
    return {"input_ids": ids, "labels": labels}


def reference(steps: int, dp: int) -> tuple[list[float], dict[str, torch.Tensor], list[float]]:
    """One process, the whole model and global batch: losses, final weights, gradient norms."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=0.01)
    losses, norms = [], []
    for step in range(steps):
        loss = model(**global_batch(step, dp)).loss
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}, norms


def train_rank(
    stage: int, tp: int, steps: int, partition_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Train with AutoTP ``tp`` under ZeRO ``stage``; per-step losses (mean over data-parallel ranks), the
    full weights on rank 0 (``_consolidated_16bit_state_dict``), norms and per-rank parameter sizes."""
    world = torch.distributed.get_world_size()
    dp = world // tp
    model = make_model()
    full_numel = {n: p.numel() for n, p in model.named_parameters()}
    cfg = config(stage, dp, tp)
    if partition_config is not None:
        cfg["tensor_parallel"]["partition_config"] = partition_config
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    local_numel = {n: p.numel() for n, p in engine.module.named_parameters()}
    d = engine.dp_rank
    losses, norms = [], []
    for step in range(steps):
        batch = {k: v[d * MICRO : (d + 1) * MICRO] for k, v in global_batch(step, dp).items()}
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        torch.distributed.all_reduce(mean)  # every rank of a tensor group holds its data-parallel rank's loss
        losses.append(mean.item() / world)
        norms.append(float(engine.get_global_grad_norm()))
    state = engine._consolidated_16bit_state_dict()
    return {
        "losses": losses,
        "norms": norms,
        "state": state,
        "full_numel": full_numel,
        "local_numel": local_numel,
        "dp": engine.dp_world_size,
        "mp": engine.mp_world_size,
        "tp_rank": engine.get_model_parallel_rank(),
        "q_heads_attr": getattr(engine.module.model.layers[0].self_attn, "num_heads", None),
    }


def _steps(engine: Any, first: int, count: int, dp: int) -> list[float]:
    out = []
    for step in range(first, first + count):
        batch = {
            k: v[engine.dp_rank * MICRO : (engine.dp_rank + 1) * MICRO]
            for k, v in global_batch(step, dp).items()
        }
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        out.append(loss.item())
    return out


def save_resume_rank(save_dir: str, stage: int) -> dict[str, Any]:
    """TP 2: train 3 steps, save, train 3 more; a fresh engine loads and repeats those 3; then full weights
    (``save_16bit_model``), ``GatherReplacedLayerParams`` and a load at tensor-parallel size 1 (refused)."""
    from deepspeed.module_inject.layers import GatherReplacedLayerParams

    world = torch.distributed.get_world_size()
    dp = world // 2
    engine, *_ = deepspeed.initialize(model=make_model(), config=config(stage, dp, 2))
    _steps(engine, 0, 3, dp)
    engine.save_checkpoint(save_dir, tag="t3")
    after = _steps(engine, 3, 3, dp)
    files = sorted(__import__("os").listdir(f"{save_dir}/t3"))
    engine2, *_ = deepspeed.initialize(model=make_model(seed=7), config=config(stage, dp, 2))
    engine2.load_checkpoint(save_dir, tag="t3")
    resumed = _steps(engine2, 3, 3, dp)
    engine2.save_16bit_model(save_dir, "full.bin")
    q = engine2.module.model.layers[0].self_attn.q_proj
    local = q.weight.detach().clone()
    with GatherReplacedLayerParams([q.weight], q, enabled=True):
        gathered_shape = tuple(q.weight.shape)
    restored = torch.equal(q.weight.detach(), local)
    # the split weight still lives in ZeRO's buffer after the gather: a step moves it
    _steps(engine2, 6, 1, dp)
    moved = not torch.equal(q.weight.detach(), local)
    refused = ""
    engine3, *_ = deepspeed.initialize(model=make_model(), config=config(stage, world, 1))
    try:
        engine3.load_checkpoint(save_dir, tag="t3")
    except Exception as exc:  # noqa: BLE001 - the message is what the test checks
        refused = f"{type(exc).__name__}: {exc}"
    return {
        "after": after,
        "resumed": resumed,
        "files": files,
        "gathered_shape": gathered_shape,
        "local_shape": tuple(local.shape),
        "restored": restored,
        "moved": moved,
        "refused": refused,
    }


def refusals_rank() -> dict[str, str]:
    """What ``deepspeed.initialize`` says for models or configs AutoTP cannot take (2 ranks, TP 2)."""
    out = {}
    cases = {
        "kv_heads": (lambda: make_model(kv_heads=1), config(1, 1, 2)),
        "stage3": (make_model, config(3, 1, 2)),
        "world": (make_model, config(1, 1, 4)),
    }
    for key, (build, cfg) in cases.items():
        try:
            deepspeed.initialize(model=build(), config=cfg)
            out[key] = "accepted"
        except Exception as exc:  # noqa: BLE001 - the message is what the test checks
            out[key] = f"{type(exc).__name__}: {exc}"
    return out
