"""Pipeline checkpoints in DeepSpeed's layout: one file per layer, so any stage count can load them.

``<dir>/<tag>/layer_NN-model_states.pt`` holds layer ``NN``'s weights (written by data-parallel rank 0 of
the stage owning it; a tied module is written at every position that uses it, as DeepSpeed does), and
``mp_rank_SS_model_states.pt`` (per stage ``SS``) holds ``module: None``, the counters, the LR schedule and,
below ZeRO 1, the stage's optimizer state as whole-parameter slices (:mod:`ds_zero.replicated_state`: the
fp32 masters and the optimizer's tensors) keyed by the parameters' stage-independent names
(``"3.weight"``, ``"tied_modules.emb.weight"``). A run saved with P stages therefore resumes with P'
stages, optimizer state included: each stage picks its parameters' entries from whichever stage file
holds them. At ZeRO 1 each rank writes its optimizer slice (``zero_pp_rank_D_mp_rank_SS_optim_states.pt``)
instead. Both are the same slice format, so a ZeRO-0 save resumes at ZeRO 1 and the other way round
(Note [pipeline ZeRO-1 resharding]). Stage files written before 2026-12-03 hold a torch-style state
keyed by those names, without the masters; they still load at ZeRO 0.

Note: [pipeline ZeRO-1 resharding] A ZeRO-1 slice file holds, per parameter range this rank owned, the
fp32 master values and optimizer state keyed by the parameter's PipelineModule name (the slice format
of :mod:`ds_zero.sharded_state`), and those names do not depend on the stage count. At the saved stage
and data-parallel sizes each rank reads its own file; at other sizes each rank reads every file and
picks the ranges of the parameters it now holds (a tied module's copies on several stages carry equal
values; the overlaps are read once), so a run saved with P stages x D ranks resumes with P' x D'.
A ZeRO-0 trainer loading them reads every file, as it holds whole parameters; a ZeRO-1 trainer loading a
ZeRO-0 save reads every stage file's whole-parameter slices and keeps its own ranges.
"""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import ds_comm
from ds_engine.checkpoint import atomic_torch_save, atomic_write_text
from ds_engine.checkpoint.files import check_safe
from ds_zero import Trainer, checkpoint_names

if TYPE_CHECKING:
    from ds_engine.pipe_engine import PipelineEngine
    from ds_parallel.pipe import PipelineModule


def _layer_module(layer: Any) -> nn.Module | None:
    """The module holding a layer's state (a tied layer with ``forward_fn`` is a ``partial``)."""
    if hasattr(layer, "state_dict"):
        return layer
    inner = getattr(layer, "args", ())
    return inner[0] if inner and hasattr(inner[0], "state_dict") else None


def _layer_prefixes(module: PipelineModule) -> dict[int, str]:
    """This stage's layer index -> its name prefix in the PipelineModule (``"3."``, ``"tied_modules.k."``)."""
    tied = {id(m): f"tied_modules.{k}." for k, m in module.tied_modules.items()}
    out = {}
    for idx, layer in module.local_layers():
        owner = _layer_module(layer)
        if owner is not None:
            out[idx] = tied.get(id(owner), f"{idx}.")
    return out


def _optimizers(engine: PipelineEngine) -> tuple[Trainer, torch.optim.Optimizer] | None:
    """The trainer and the torch optimizer it steps; None without an optimizer (the engine wraps the one
    into the other, so there are both or neither)."""
    trainer, inner = engine.optimizer, engine.basic_optimizer
    return (trainer, inner) if trainer is not None and inner is not None else None


def _holder_names(trainer: Trainer, module: nn.Module) -> dict[int, str]:
    return {id(trainer.master_of(p)): name for name, p in module.named_parameters()}


def save(
    engine: PipelineEngine, save_dir: str, tag: Any, client_state: dict[str, Any], save_latest: bool
) -> bool:
    """Write the pipeline checkpoint (every rank must call it)."""
    tag = str(tag) if tag is not None else f"global_step{engine.global_steps}"
    client_state = dict(client_state or {})
    check_safe(client_state)
    tag_dir = os.path.join(os.fspath(save_dir), tag)
    os.makedirs(tag_dir, exist_ok=True)
    ds_comm.barrier()
    module, stage, dp_rank = engine.module, engine.stage_id, engine.grid.get_data_parallel_id()
    if dp_rank == 0:
        for local, (_, layer) in enumerate(module.local_layers()):
            owner = _layer_module(layer)
            if owner is not None:
                sd = {k: v.detach().cpu().clone() for k, v in owner.state_dict().items()}
                atomic_torch_save(sd, module.ckpt_layer_path(tag_dir, local))
        optimizers = _optimizers(engine)
        sharded = optimizers is not None and optimizers[0].sharded_state
        state = {
            "module": None,
            "global_steps": engine.global_steps,
            "global_samples": engine.global_samples,
            "skipped_steps": engine.skipped_steps,
            "num_stages": engine.num_stages,
            "dp_world_size": engine.dp_world_size,
            "ds_config": engine.config,
            "pipe_layer_prefixes": _layer_prefixes(module),
            "lr_scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None,
            # below ZeRO 1: whole-parameter slices (ds_zero.replicated_state), fp32 masters included
            "optimizer": optimizers[0].state_dict() if optimizers is not None and not sharded else None,
            **client_state,
        }
        atomic_torch_save(state, os.path.join(tag_dir, checkpoint_names.model_states(stage)))
    if engine.optimizer is not None and engine.optimizer.sharded_state:
        atomic_torch_save(
            {"optimizer_state_dict": engine.optimizer.state_dict()},
            os.path.join(tag_dir, checkpoint_names.zero_optim_states(dp_rank, stage)),
        )
    ds_comm.barrier()
    if save_latest and ds_comm.get_rank() == 0:
        atomic_write_text(os.path.join(os.fspath(save_dir), checkpoint_names.LATEST), tag)
    ds_comm.barrier()
    return True


def _load(path: str) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _is_legacy_named(saved: Any) -> bool:
    """A ZeRO-0 stage file's optimizer state as written before 2026-12-03: ``{"state": {name: ...},
    "param_groups": [...]}``, without the fp32 masters."""
    return isinstance(saved, dict) and "state" in saved and "slices" not in saved


def _load_legacy_named_optimizer(
    engine: PipelineEngine, trainer: Trainer, inner: torch.optim.Optimizer, saved: list[Any]
) -> None:
    merged: dict[str, Any] = {}
    groups = None
    for content in saved:
        merged.update(content["state"])
        groups = content["param_groups"]
    names = _holder_names(trainer, engine.module)
    for group in inner.param_groups:
        for p in group["params"]:
            name = names.get(id(p))
            if name is None or name not in merged:
                raise RuntimeError(f"the checkpoint has no optimizer state for parameter {name!r}")
            inner.state[p] = {
                k: (v.to(p.device) if isinstance(v, torch.Tensor) and v.dim() > 0 else v)
                for k, v in merged[name].items()
            }
    if groups:
        for group, saved_group in zip(inner.param_groups, groups):
            group.update(saved_group)


def _optimizer_slices(
    engine: PipelineEngine, trainer: Trainer, tag_dir: str, first: dict[str, Any], stage_states: list[Any]
) -> Any:
    """The optimizer slices this rank loads (Note [pipeline ZeRO-1 resharding]): a ZeRO-1 save's files,
    only its own when it is ZeRO 1 at the saved stage and data-parallel sizes, else every one; a ZeRO-0
    save's whole-parameter slices from every stage file."""
    files = sorted(glob.glob(os.path.join(tag_dir, checkpoint_names.ZERO_OPTIM_STATES_GLOB)))
    if not files:
        saved = [s for s in stage_states if s is not None]
        if not saved:
            raise RuntimeError(f"pipeline checkpoint {tag_dir} holds no optimizer state")
        return saved
    same = first.get("num_stages") == engine.num_stages and first.get("dp_world_size") == engine.dp_world_size
    if same and trainer.sharded_state:
        own = checkpoint_names.zero_optim_states(engine.grid.get_data_parallel_id(), engine.stage_id)
        return _load(os.path.join(tag_dir, own))["optimizer_state_dict"]
    expected = int(first.get("num_stages") or 0) * int(first.get("dp_world_size") or 0)
    if len(files) != expected:
        raise FileNotFoundError(
            f"{tag_dir} should hold {expected} ZeRO-1 optimizer files "
            f"({checkpoint_names.ZERO_OPTIM_STATES_GLOB}) to reshard from, found {len(files)}"
        )
    return [_load(path)["optimizer_state_dict"] for path in files]


def load(
    engine: PipelineEngine,
    load_dir: str,
    tag: Any,
    *,
    load_optimizer_states: bool,
    load_lr_scheduler_states: bool,
    load_module_only: bool,
    strict: bool = True,
) -> tuple[str | None, dict[str, Any] | None]:
    """Restore a pipeline checkpoint saved at any stage count; returns ``(path, client_state)``."""
    load_dir = os.fspath(load_dir)
    if tag is None:
        latest = os.path.join(load_dir, checkpoint_names.LATEST)
        if not os.path.isfile(latest):
            return None, None
        with open(latest, encoding="utf-8") as handle:
            tag = handle.read().strip()
    tag_dir = os.path.join(load_dir, str(tag))
    module = engine.module
    for local, (idx, layer) in enumerate(module.local_layers()):
        owner = _layer_module(layer)
        if owner is None:
            continue
        path = module.ckpt_layer_path(tag_dir, local)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pipeline checkpoint {tag_dir} has no file for layer {idx} ({path})")
        owner.load_state_dict(_load(path), strict=strict)
    stage_files = sorted(glob.glob(os.path.join(tag_dir, checkpoint_names.STAGE_MODEL_STATES_GLOB)))
    if not stage_files:
        raise FileNotFoundError(
            f"pipeline checkpoint {tag_dir} has no {checkpoint_names.STAGE_MODEL_STATES_GLOB}"
        )
    first = _load(stage_files[0])
    optimizers = _optimizers(engine)
    if optimizers is not None:
        optimizers[0].refresh_fp32_params()  # masters follow the loaded weights
    if load_module_only:
        return tag_dir, {}
    if optimizers is not None and load_optimizer_states:
        optimizer, inner = optimizers
        stage_states = [first.get("optimizer")] + [_load(p).get("optimizer") for p in stage_files[1:]]
        if any(_is_legacy_named(s) for s in stage_states):
            if optimizer.sharded_state:
                raise RuntimeError(
                    f"{tag_dir} was saved at ZeRO 0 before 2026-12-03 (optimizer state without fp32 "
                    "masters), which loads at ZeRO 0 only: resume at ZeRO 0 and save again to change stage"
                )
            _load_legacy_named_optimizer(engine, optimizer, inner, stage_states)
        else:
            optimizer.load_state_dict(_optimizer_slices(engine, optimizer, tag_dir, first, stage_states))
    if load_lr_scheduler_states and engine.lr_scheduler is not None and first.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(first["lr_scheduler"])
    engine.global_steps = int(first.get("global_steps", 0))
    engine.global_samples = int(first.get("global_samples", 0))
    engine.skipped_steps = int(first.get("skipped_steps", 0))
    keys = {
        "module",
        "global_steps",
        "global_samples",
        "skipped_steps",
        "num_stages",
        "dp_world_size",
        "ds_config",
        "lr_scheduler",
        "optimizer",
        "pipe_layer_prefixes",
    }
    return tag_dir, {k: v for k, v in first.items() if k not in keys}
