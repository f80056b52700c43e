"""Rank functions and the single-process reference for AutoTP on fused projections (tiny HF GPT-2 and Phi-3).

GPT-2 fuses q, k, v in ``attn.c_attn`` (a transformers ``Conv1D``, weight ``[hidden, 3 * hidden]``) and
uses ``Conv1D`` for ``c_proj``/``mlp.c_fc``/``mlp.c_proj``; Phi-3 fuses q, k, v in ``qkv_proj`` with GQA
(4 query heads, 2 key/value heads, so the blocks have different sizes) and gate, up in ``gate_up_proj``.
Batches and data-parallel slicing are tp_workers' (every rank of a tensor group takes its data-parallel
rank's samples); the reference trains the whole model on the whole global batch in one process.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import tp_workers

import deepspeed

MICRO, SEQ, VOCAB, LR, CLIP = (
    tp_workers.MICRO,
    tp_workers.SEQ,
    tp_workers.VOCAB,
    tp_workers.LR,
    tp_workers.CLIP,
)


def make_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """Tiny ``gpt2`` (hidden 32, 4 heads, 2 layers, tied head, dropout off) or ``phi3`` (hidden 32, 4 heads,
    2 KV heads, intermediate 64, 2 layers, untied head), fp32, seeded."""
    torch.manual_seed(seed)
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(
            vocab_size=VOCAB,
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=4,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            attn_implementation="eager",
        )
        return GPT2LMHeadModel(cfg).float()
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    return Phi3ForCausalLM(cfg).float()


def reference(kind: str, steps: int, dp: int) -> tuple[list[float], dict[str, torch.Tensor], list[float]]:
    """One process, the whole model and global batch: losses, final weights, gradient norms."""
    model = make_model(kind)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=0.01)
    losses, norms = [], []
    for step in range(steps):
        loss = model(**tp_workers.global_batch(step, dp)).loss
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)))
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, {n: p.detach().clone() for n, p in model.state_dict().items()}, norms


def _sub_blocks(kind: str) -> dict[str, tuple[int, list[int]]]:
    """Fused parameter name suffix -> (split dim, sizes of its blocks) in the plain model."""
    if kind == "gpt2":
        return {"attn.c_attn.weight": (1, [32, 32, 32]), "attn.c_attn.bias": (0, [32, 32, 32])}
    return {"self_attn.qkv_proj.weight": (0, [32, 16, 16]), "mlp.gate_up_proj.weight": (0, [64, 64])}


def train_rank(kind: str, stage: int, tp: int, steps: int, save_dir: str) -> dict[str, Any]:
    """Train ``kind`` with AutoTP ``tp`` under ZeRO ``stage``; then ``save_16bit_model`` into ``save_dir``.

    Returns per-step losses (mean over data-parallel ranks) and norms, the full weights on rank 0
    (``_consolidated_16bit_state_dict``), the full and local parameter sizes, and whether this rank's local
    fused weights at the start are exactly its 1/TP of each block of the plain model's weight."""
    world = torch.distributed.get_world_size()
    dp = world // tp
    model = make_model(kind)
    plain = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = tp_workers.config(stage, dp, tp)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    rank = engine.get_model_parallel_rank()
    local = dict(engine.module.named_parameters())
    blocks_ok = {}
    for name, (dim, sizes) in ((n, b) for n in plain for s, b in _sub_blocks(kind).items() if n.endswith(s)):
        mine = [blk.chunk(tp, dim=dim)[rank] for blk in plain[name].split(sizes, dim=dim)]
        blocks_ok[name] = torch.equal(local[name].detach(), torch.cat(mine, dim=dim))
    d = engine.dp_rank
    losses, norms = [], []
    for step in range(steps):
        batch = {k: v[d * MICRO : (d + 1) * MICRO] for k, v in tp_workers.global_batch(step, dp).items()}
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        mean = loss.detach().clone()
        torch.distributed.all_reduce(mean)
        losses.append(mean.item() / world)
        norms.append(float(engine.get_global_grad_norm()))
    state = engine._consolidated_16bit_state_dict()
    engine.save_16bit_model(save_dir, "full.bin")
    # DeepSpeed's GatherReplacedLayerParams on the first fused weight: the full fused layout inside, the
    # local slice again after
    from deepspeed.module_inject.layers import GatherReplacedLayerParams

    fused_name = next(iter(blocks_ok))
    owner = engine.module.get_submodule(fused_name.rsplit(".", 1)[0])
    before = owner.weight.detach().clone()
    with GatherReplacedLayerParams([owner.weight], owner, enabled=True):
        gathered = owner.weight.detach().clone()
    restored = torch.equal(owner.weight.detach(), before)
    return {
        "losses": losses,
        "norms": norms,
        "state": state,
        "blocks_ok": blocks_ok,
        "gathered": (fused_name, gathered),
        "restored": restored,
        "full_numel": {n: p.numel() for n, p in plain.items()},
        "local_numel": {n: p.numel() for n, p in local.items()},
        "saved": sorted(os.listdir(save_dir)) if engine.global_rank == 0 else None,
    }
