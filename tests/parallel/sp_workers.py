"""Rank functions and the single-process reference for the sequence-parallel tests (tiny HF Llama).

Every run trains the same tiny Llama on the same global batches: step ``k``'s batch has ``MICRO``
samples per data-parallel rank; data-parallel rank ``d`` takes samples ``[d * MICRO, (d + 1) * MICRO)``,
and the ranks of its sequence-parallel group each take their shard of those samples' sequence.
"""

from __future__ import annotations

from typing import Any

import torch

import deepspeed

MICRO, SEQ, VOCAB, LR, CLIP = 2, 16, 64, 0.5, 0.5
# SGD is linear in the gradient, so any error in averaging or in the loss weighting shows in the weights
# (Adam's normalised step would hide a constant factor).


def make_model(seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).float()


def config(stage: int, dp: int, sp: int | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": MICRO,
        "train_batch_size": MICRO * dp,
        "optimizer": {"type": "SGD", "params": {"lr": LR, "momentum": 0.9, "weight_decay": 0.01}},
        "zero_optimization": {"stage": stage},
        "gradient_clipping": CLIP,  # the global norm spans every shard
    }
    if sp is not None:
        cfg["sequence_parallel_size"] = sp
    return cfg


def global_batch(step: int, dp: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1009 * step + 3)
    ids = torch.randint(0, VOCAB, (MICRO * dp, SEQ), generator=gen)
    labels = ids.clone()
    labels[:, :3] = -100  # prompt tokens: not trained on (shards then hold different token counts)
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": torch.arange(SEQ).expand(MICRO * dp, SEQ).clone(),
    }


def shard_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of a (sharded) batch that carries ``shift_labels``."""
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, VOCAB), batch["shift_labels"].reshape(-1), ignore_index=-100
    )


def reference(steps: int, dp: int | list[int]) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Single process, no sequence parallelism: per-step losses (mean over data-parallel groups), weights.

    ``dp`` may differ per step (a list): a run resumed at another data-parallel size."""
    from ds_parallel.ulysses import shift_and_shard

    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=0.01)
    losses = []
    schedule = dp if isinstance(dp, list) else [dp] * steps
    for step in range(steps):
        dp = schedule[step]
        batch = global_batch(step, dp)
        total = 0.0
        for d in range(dp):
            part = shift_and_shard({k: v[d * MICRO : (d + 1) * MICRO] for k, v in batch.items()}, 0, 1)
            loss = shard_loss(model, part) / dp
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)  # the config's gradient_clipping
        opt.step()
        opt.zero_grad()
        losses.append(total)
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def full_params(engine: Any) -> dict[str, torch.Tensor]:
    from deepspeed.utils import safe_get_full_fp32_param

    return {n: safe_get_full_fp32_param(p).detach().clone() for n, p in engine.module.named_parameters()}


def _sp_engine(stage: int, sp: int, via: str, ckpt: bool = False, bf16: bool = False) -> tuple[Any, Any]:
    from ds_comm import get_world_size
    from ds_parallel.ulysses import UlyssesSPAttentionHF

    model = make_model()
    if ckpt:  # HF activation checkpointing: the recomputed forward runs the all-to-alls again
        model.gradient_checkpointing_enable()
    dp = get_world_size() // sp
    mpu = UlyssesSPAttentionHF.register_with_transformers(
        model,
        core_attn_implementation="sdpa",
        sequence_parallel_size=sp,
        micro_batch_size=MICRO,
        seq_length=SEQ,
        seq_length_is_variable=False,
    )
    cfg = config(stage, dp, sp if via == "config" else None)  # "config": the config alone says sp, no mpu
    if bf16:
        cfg["bf16"] = {"enabled": True}
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=cfg, mpu=None if via == "config" else mpu
    )
    return engine, mpu


def train_sp(
    stage: int, sp: int, steps: int, via: str = "mpu", ckpt: bool = False, bf16: bool = False
) -> dict[str, Any]:
    """Train with sequence parallelism ``sp``; every rank's losses, and the full weights."""
    from deepspeed.utils import groups
    from ds_parallel.ulysses import sequence_parallel_loss, shift_and_shard

    engine, _ = _sp_engine(stage, sp, via, ckpt=ckpt, bf16=bf16)
    dp_rank, sp_rank = groups._get_data_parallel_rank(), groups._get_sequence_parallel_rank()
    sp_group, dp = groups._get_sequence_parallel_group(), groups._get_data_parallel_world_size()
    losses = []
    for step in range(steps):
        batch = global_batch(step, dp)
        mine = {k: v[dp_rank * MICRO : (dp_rank + 1) * MICRO] for k, v in batch.items()}
        shard = shift_and_shard(mine, sp_rank, sp)
        loss = sequence_parallel_loss(shard_loss(engine, shard), shard["shift_labels"], sp_group)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return {
        "losses": losses,
        "params": full_params(engine),
        "dp": engine.dp_world_size,
        "seq_dp": engine.seq_dp_world_size,
        "sp": engine.sequence_parallel_size,
        "train_batch_size": engine.train_batch_size(),
    }


def error_of(fn_name: str, *args: Any) -> str:
    """Run a setup that must fail before any compute; the error text (or '' when nothing raised)."""
    try:
        globals()[fn_name](*args)
    except Exception as exc:  # noqa: BLE001 - the test reads the message
        return f"{type(exc).__name__}: {exc}"
    return ""


def _register(heads: int, kv: int, sp: int, seq: int | None) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from ds_parallel.ulysses import UlyssesSPAttentionHF

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=8 * heads,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        attn_implementation="sdpa",
    )
    UlyssesSPAttentionHF.register_with_transformers(
        LlamaForCausalLM(cfg), "sdpa", sp, 1, seq_length=seq, seq_length_is_variable=seq is None
    )


def _initialize_sp(sp: int) -> None:
    model = torch.nn.Linear(2, 2)
    deepspeed.initialize(
        model=model,
        model_parameters=model.parameters(),
        config={
            "train_micro_batch_size_per_gpu": 1,
            "sequence_parallel_size": sp,
            "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
        },
    )


def _shard_odd_length(sp: int) -> None:
    from ds_parallel.ulysses import shift_and_shard

    ids = torch.zeros(1, 15, dtype=torch.long)
    shift_and_shard({"input_ids": ids, "labels": ids, "position_ids": ids}, 0, sp)


def _eager(sp: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from ds_parallel.ulysses import UlyssesSPAttentionHF

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="eager",
    )
    UlyssesSPAttentionHF.register_with_transformers(LlamaForCausalLM(cfg), "eager", sp, 1)


def setup_errors(sp: int) -> dict[str, str]:
    """Each misconfiguration's error on this rank (all raised before any compute)."""
    return {
        "heads": error_of("_register", 6, 2, sp if sp != 2 else 4, None),
        "kv_heads": error_of("_register", 8, 6, 4, None),
        "world": error_of("_initialize_sp", 3),
        "seq_register": error_of("_register", 4, 2, sp, 15),
        "seq_shard": error_of("_shard_odd_length", sp),
        "eager": error_of("_eager", sp),
    }


def save_then_resume(stage: int, sp_save: int, sp_load: int, save_dir: str) -> dict[str, Any]:
    """Train 3 steps at ``sp_save`` and save; a fresh engine at ``sp_load`` loads and trains 3 more.

    Without sequence parallelism (``sp`` = 1) the whole sequence is on every rank of the data axis."""
    import ds_parallel
    from deepspeed.utils import groups
    from ds_parallel.ulysses import sequence_parallel_loss, shift_and_shard
    from ds_parallel.ulysses.registration import unregister

    out: dict[str, Any] = {}
    for phase, sp, steps in (("save", sp_save, range(3)), ("load", sp_load, range(3, 6))):
        unregister("sdpa")
        ds_parallel.set_current(None)
        if sp > 1:
            engine, _ = _sp_engine(stage, sp, "mpu")
        else:
            model = make_model()
            engine, *_ = deepspeed.initialize(
                model=model, model_parameters=model.parameters(), config=config(stage, engine_dp(1))
            )  # sp 1: every rank is data-parallel
        if phase == "load":
            engine.load_checkpoint(save_dir)
        dp, dp_rank = engine.dp_world_size, engine.dp_rank
        sp_rank = groups._get_sequence_parallel_rank()
        losses = []
        for step in steps:
            batch = global_batch(step, dp)
            mine = shift_and_shard(
                {k: v[dp_rank * MICRO : (dp_rank + 1) * MICRO] for k, v in batch.items()}, sp_rank, sp
            )
            loss = shard_loss(engine, mine)
            if sp > 1:
                loss = sequence_parallel_loss(
                    loss, mine["shift_labels"], groups._get_sequence_parallel_group()
                )
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        if phase == "save":
            engine.save_checkpoint(save_dir, tag="sp")
        out[phase] = losses
    out["params"] = full_params(engine)
    return out


def engine_dp(sp: int) -> int:
    from ds_comm import get_world_size

    return get_world_size() // sp


def activation_bytes(seq: int, sp: int) -> int:
    """Bytes autograd saves for backward in one forward + loss of ``MICRO`` samples of length ``seq``,
    on this rank's sequence shard (``sp`` > 1: Ulysses registered; 1: the whole sequence, no groups)."""
    from ds_parallel.memory import saved_activation_bytes
    from ds_parallel.ulysses import UlyssesSPAttentionHF, sequence_parallel_loss, shift_and_shard

    model = make_model()
    rank, group = 0, None
    if sp > 1:
        mpu = UlyssesSPAttentionHF.register_with_transformers(
            model, "sdpa", sp, MICRO, seq_length=seq, seq_length_is_variable=False
        )
        rank, group = mpu.get_sequence_parallel_rank(), mpu.get_sequence_parallel_group()
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (MICRO, seq), generator=gen)
    batch = shift_and_shard(
        {"input_ids": ids, "labels": ids, "position_ids": torch.arange(seq).expand(MICRO, seq)}, rank, sp
    )

    def step() -> None:
        loss = shard_loss(model, batch)
        if group is not None:
            loss = sequence_parallel_loss(loss, batch["shift_labels"], group)

    return saved_activation_bytes(step)


def train_plain_bf16(stage: int, steps: int) -> list[float]:
    """The engine without sequence parallelism on one rank, bf16: the losses of the same global batches."""
    from ds_parallel.ulysses import shift_and_shard

    model = make_model()
    cfg = {**config(stage, 1), "bf16": {"enabled": True}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=cfg)
    losses = []
    for step in range(steps):
        loss = shard_loss(engine, shift_and_shard(global_batch(step, 1), 0, 1))
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def second_engine_keeps_groups() -> dict[str, Any]:
    """A sequence-parallel engine, then a second engine without sp (TRL's reference model does this)."""
    from deepspeed.utils import groups

    engine, _ = _sp_engine(2, 2, "mpu")
    ref = make_model()
    ref_engine, *_ = deepspeed.initialize(
        model=ref, config={"train_micro_batch_size_per_gpu": MICRO, "zero_optimization": {"stage": 3}}
    )
    return {
        "sp_after": groups._get_sequence_parallel_world_size(),
        "main_group": engine.get_sequence_parallel_group() is groups._get_sequence_parallel_group(),
        "ref_group": ref_engine.get_sequence_parallel_group(),
        "ref_dp": ref_engine.dp_world_size,
    }
