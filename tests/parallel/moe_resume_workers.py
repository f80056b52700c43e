"""Rank functions for resuming MoE training from a checkpoint with its optimizer state.

``reference``: train ``SAVED`` steps with Adam, save tag ``t``, train ``MORE`` steps (the uninterrupted run).
``resume``: a new engine (experts initialised differently, so nothing is right unless loaded) loads tag
``t`` and trains the same ``MORE`` steps. Both return the losses of the ``MORE`` steps and the final weights
keyed by global expert (``moe_workers._global_weights``).
"""

from __future__ import annotations

from typing import Any

import moe_workers as W  # noqa: E402 - the model, batches and weight naming of the MoE engine tests
import torch.nn.functional as F

import deepspeed

SAVED, MORE = 3, 3


def _config(stage: int, dp: int, bf16: bool) -> dict[str, Any]:
    cfg = {
        "train_micro_batch_size_per_gpu": W.MICRO,
        "train_batch_size": W.MICRO * dp,
        "optimizer": {"type": "AdamW", "params": {"lr": 0.02, "betas": [0.9, 0.99], "weight_decay": 0.01}},
        "zero_optimization": {"stage": stage},
        "gradient_clipping": W.CLIP,
    }
    if bf16:
        cfg["bf16"] = {"enabled": True}
    return cfg


def _steps(engine: Any, first: int, count: int, rank: int, world: int) -> list[float]:
    losses = []
    for step in range(first, first + count):
        x, y = W.batch(step, world)
        dtype = next(
            engine.module.parameters()
        ).dtype  # bf16: the model's inputs in its dtype, as users cast them
        logits, l_aux = engine(x[rank * W.MICRO : (rank + 1) * W.MICRO].to(engine.device, dtype))
        loss = (
            F.cross_entropy(logits.float(), y[rank * W.MICRO : (rank + 1) * W.MICRO]) + W.AUX * l_aux.float()
        )
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def resume_rank(
    stage: int,
    ep_size: int,
    save_dir: str,
    phase: str,
    load_kwargs: dict[str, Any] | None = None,
    bf16: bool = False,
) -> dict[str, Any]:
    """One rank of ``phase`` (``reference`` or ``resume``; see the module docstring)."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    ep_rank = rank % ep_size
    model = W.MoENet(ep_size, ep_rank if phase == "reference" else (ep_rank + 1) % ep_size)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=_config(stage, world, bf16)
    )
    out: dict[str, Any] = {}
    if phase == "reference":
        _steps(engine, 0, SAVED, rank, world)
        engine.save_checkpoint(save_dir, tag="t")
        out["saved_weights"] = W._global_weights(engine.module, ep_size, ep_rank)
    else:
        try:
            engine.load_checkpoint(save_dir, tag="t", **(load_kwargs or {}))
        except Exception as exc:  # noqa: BLE001 - the refusal's message is what the test checks
            return {"error": f"{type(exc).__name__}: {exc}"}
        out["global_steps"] = engine.global_steps
    out["losses"] = _steps(engine, SAVED, MORE, rank, world)
    out["weights"] = W._global_weights(engine.module, ep_size, ep_rank)
    return out


def roundtrip_rank(
    save_dir: str, stage: int, save_ep: int, load_stage: int, load_ep: int, bf16: bool = False
) -> dict[str, Any]:
    """Both phases in one launch (one process start instead of two): the reference run, then a new
    engine at ``load_stage`` / ``load_ep`` that resumes from its checkpoint."""
    return {
        "reference": resume_rank(stage, save_ep, save_dir, "reference", bf16=bf16),
        "resumed": resume_rank(load_stage, load_ep, save_dir, "resume", bf16=bf16),
    }


def reshard_rank(save_dir: str, stage: int, ep_size: int, phase: str) -> list[dict[str, Any]]:
    """``save``: train ``SAVED`` steps and save at this world size; ``load``: load at this world size and
    return the optimizer state this rank now holds, expert keys global (the slices a save would write)."""
    import torch.distributed as dist

    from ds_engine import moe_optimizer_checkpoint

    rank, world = dist.get_rank(), dist.get_world_size()
    ep_rank = rank % ep_size
    model = W.MoENet(ep_size, ep_rank if phase == "save" else (ep_rank + 1) % ep_size)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=_config(stage, world, False)
    )
    if phase == "save":
        _steps(engine, 0, SAVED, rank, world)
        engine.save_checkpoint(save_dir, tag="t")
        return []
    engine.load_checkpoint(save_dir, tag="t")
    state = moe_optimizer_checkpoint.globalize(engine, engine.optimizer.state_dict())
    return [
        {
            "key": p["key"],
            "start": p["start"],
            "end": p["end"],
            "fp32": p["fp32"],
            "state": p["state"],
            "step": state["group_scalars"][p["group"]]["step"],
        }
        for p in state["slices"]
    ]
