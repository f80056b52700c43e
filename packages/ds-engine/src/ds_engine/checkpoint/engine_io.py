"""Save and load an engine's training state in DeepSpeed's layout (:mod:`.layout`).

Save: rank 0 removes an interrupted save's temporaries -> rendezvous (every rank, same tag) -> each
writer writes its files atomically -> rendezvous (every file is on disk) -> the file reports are
gathered and rank 0 writes the tag's manifest, then ``latest``, atomically -> rendezvous. Load never
needs the other ranks: every rank checks the files it reads against the manifest (:mod:`.integrity`)
and reads them itself.

Note: [one slice format] Every stage's optimizer saves its state as per-parameter slices (ds_zero's
``sharded_state`` format; stage 0's slices cover whole parameters). A replicated optimizer's state goes
in the model-states file under ``optimizer``, as DeepSpeed stores it; a sharded one (``sharded_state``)
writes one ``zero_pp_rank_<r>_mp_rank_00_optim_states.pt`` per rank. Loading hands the optimizer every
saved slice, so a checkpoint of any stage and world size loads at any other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from importlib import metadata
from typing import Any

from torch import nn

import ds_comm
from ds_engine.checkpoint import integrity, layout, manifest
from ds_engine.checkpoint.engine_state import CheckpointedEngine
from ds_engine.checkpoint.files import (
    WrittenFile,
    atomic_torch_save,
    atomic_write_text,
    check_safe,
    clone_tensors_for_torch_save,
    remove_stale_temporaries,
)
from ds_engine.checkpoint.rendezvous import check_same_tag, wait_for_all
from ds_zero import Trainer, deepspeed_format
from ds_zero.sharded_state import FORMAT as SLICES_FORMAT
from ds_zero.sharded_state import consolidate_fp32

logger = logging.getLogger("ds_engine")


def ds_version() -> str:
    """The installed ``deepspeed`` meta-package version (what DeepSpeed stores as ``ds_version``)."""
    try:
        return metadata.version("deepspeed")
    except metadata.PackageNotFoundError:
        from ds_engine._version import __version__

        return __version__


def module_state(engine: CheckpointedEngine, exclude_frozen_parameters: bool) -> dict[str, Any]:
    """The module's state dict, optionally without parameters that do not require grad."""
    sd = engine.module.state_dict()
    if exclude_frozen_parameters:
        frozen = {name for name, p in engine.module.named_parameters() if not p.requires_grad}
        sd = type(sd)((k, v) for k, v in sd.items() if k not in frozen)
    return sd


def _buffer_names(module: nn.Module) -> list[str]:
    names = []
    for mod_name, mod in module.named_modules():
        for name, buf in mod.named_buffers(recurse=False):
            if buf is not None and name not in mod._non_persistent_buffers_set:
                names.append(f"{mod_name}.{name}" if mod_name else name)
    return names


def model_states(
    engine: CheckpointedEngine,
    exclude_frozen_parameters: bool,
    sharded_optimizer: bool,
    module: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The dict written to ``mp_rank_00_model_states.pt`` (before the client's keys are added).
    ``module`` overrides the module's own state dict (stage 3 passes the gathered one)."""
    return {
        layout.MODULE: module if module is not None else module_state(engine, exclude_frozen_parameters),
        layout.BUFFER_NAMES: _buffer_names(engine.module),
        layout.OPTIMIZER: None
        if (engine.optimizer is None or sharded_optimizer or engine.has_moe_layers)
        else engine.optimizer.state_dict(),  # MoE at stage 0: in the expp_rank files (Note [expert optimizer state])
        layout.PARAM_SHAPES: None,
        layout.FROZEN_PARAM_SHAPES: None,
        layout.SHARED_PARAMS: None,
        layout.FROZEN_PARAM_FRAGMENTS: None,
        layout.LR_SCHEDULER: engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None,
        layout.DATA_SAMPLER: None,
        layout.RANDOM_LTD: None,
        layout.SKIPPED_STEPS: engine.skipped_steps,
        layout.GLOBAL_STEPS: engine.global_steps,
        layout.GLOBAL_SAMPLES: engine.global_samples,
        layout.DP_WORLD_SIZE: engine.seq_dp_world_size,  # ranks holding optimizer shards (DeepSpeed's too)
        layout.MP_WORLD_SIZE: engine.mp_world_size,  # AutoTP: one model file per tensor rank
        layout.DS_CONFIG: engine.config,
        layout.DS_VERSION: ds_version(),
        layout.MANIFEST_KEY: layout.MANIFEST,  # this save ends with a manifest (Note [complete or refused])
    }


def save(
    engine: CheckpointedEngine,
    save_dir: str,
    tag: Any,
    client_state: dict[str, Any],
    save_latest: bool,
    exclude_frozen_parameters: bool,
) -> bool:
    """Write a checkpoint of ``engine`` (see the module docstring). Every rank must call it."""
    if not save_dir:
        raise ValueError(f"save_dir must be a non-empty path, got {save_dir!r}")
    save_dir = os.fspath(save_dir)
    tag = str(tag) if tag is not None else layout.default_tag(engine.global_steps)
    client_state = dict(client_state or {})
    check_safe(client_state)
    ckpt = engine._config.checkpoint
    group, timeout = engine.checkpoint_group, ckpt.rendezvous_timeout
    rank = ds_comm.get_local_rank() if ckpt.use_node_local_storage else ds_comm.get_rank()
    if rank == 0:  # before the first rendezvous no rank of this save writes yet (Note [stale temporaries])
        remove_stale_temporaries(layout.tag_dir(save_dir, tag))
        remove_stale_temporaries(save_dir, names=[layout.LATEST])
    wait_for_all("save_checkpoint", group=group, timeout_s=timeout)
    check_same_tag(tag, group=group, mode=ckpt.tag_validation_mode)

    os.makedirs(layout.tag_dir(save_dir, tag), exist_ok=True)
    if rank == 0:  # saving a tag again: until its new manifest is written the tag is incomplete
        with suppress(FileNotFoundError):
            os.unlink(layout.manifest_path(save_dir, tag))
    entries = _write_files(
        engine,
        save_dir,
        tag,
        client_state,
        exclude_frozen_parameters,
        rank,
        node_local=ckpt.use_node_local_storage,
    )
    wait_for_all("save_checkpoint (writing files)", group=group, timeout_s=timeout)
    entries = manifest.gather(entries, group=group)  # Note [complete or refused]
    if rank == 0:
        manifest.write(
            save_dir,
            tag,
            manifest.build(
                tag,
                entries,
                ds_version=ds_version(),
                world_size=ds_comm.get_world_size() if group is not None else 1,
                dp_world_size=engine.seq_dp_world_size,
                zero_stage=engine.zero_optimization_stage(),
                optimizer_states=engine.optimizer is not None,
            ),
        )
    if save_latest and ds_comm.get_rank() == 0:
        atomic_write_text(layout.latest_path(save_dir), tag)
    wait_for_all("save_checkpoint (latest)", group=group, timeout_s=timeout)
    if ds_comm.get_rank() == 0:
        logger.info("saved checkpoint %s", os.path.join(save_dir, tag))
    return True


def _write_files(
    engine: CheckpointedEngine,
    save_dir: str,
    tag: str,
    client_state: dict[str, Any],
    exclude_frozen_parameters: bool,
    rank: int,
    *,
    node_local: bool,
) -> list[dict[str, Any]]:
    """This rank's files of the checkpoint, written atomically; returns its manifest entries."""
    sharded = engine.optimizer is not None and engine.optimizer.sharded_state
    written: list[tuple[WrittenFile, str]] = []
    # AutoTP: each tensor-parallel rank's data-parallel rank 0 writes mp_rank_<tp>_model_states.pt, and the
    # optimizer files carry the tensor rank too (zero_pp_rank_<dp>_mp_rank_<tp>), DeepSpeed's layout.
    mp, mp_size = engine.get_model_parallel_rank(), engine.mp_world_size
    trainer = engine.optimizer
    if engine.zero_optimization_stage() == 3 and trainer is not None:
        # Stage 3: gathering the module is collective (every rank), and only rank 0 keeps it.
        dtype = trainer.policy.mixed_precision.param_dtype
        gathered = trainer.full_state_dict(dtype=dtype, exclude_frozen_parameters=exclude_frozen_parameters)
        state = model_states(engine, exclude_frozen_parameters, sharded, module=gathered if rank == 0 else {})
        state.update(client_state)
        path = layout.zero3_model_states_path(save_dir, tag, engine.get_data_parallel_rank())
        written.append((atomic_torch_save(state, path), manifest.MODEL_STATES))
    elif rank == 0 if mp_size == 1 else engine.get_data_parallel_rank() == 0:
        state = model_states(engine, exclude_frozen_parameters, sharded)
        state.update(client_state)
        written.append(
            (atomic_torch_save(state, layout.model_states_path(save_dir, tag, mp)), manifest.MODEL_STATES)
        )
    if sharded and trainer is not None:  # every rank writes its own slice (Note [one slice format])
        shard = {
            layout.OPTIMIZER_STATE_DICT: _optimizer_state(engine, trainer),
            layout.DS_CONFIG: engine.config,
            layout.DS_VERSION: ds_version(),
        }
        path = layout.zero_optim_states_path(save_dir, tag, engine.get_data_parallel_rank(), mp)
        written.append((atomic_torch_save(shard, path), manifest.OPTIM_STATES))
    elif trainer is not None and engine.has_moe_layers:  # Note [expert optimizer state]
        from ds_engine import moe_optimizer_checkpoint

        expp = moe_optimizer_checkpoint.expp_path(save_dir, tag, mp)
        if expp is not None:
            content = {
                layout.OPTIMIZER: _optimizer_state(engine, trainer),
                layout.DS_CONFIG: engine.config,
                layout.DS_VERSION: ds_version(),
            }
            written.append((atomic_torch_save(content, expp), manifest.OPTIM_STATES))
    return [manifest.entry(w, kind=kind, node_local=node_local) for w, kind in written]


def _optimizer_state(engine: CheckpointedEngine, trainer: Trainer) -> dict[str, Any]:
    """The optimizer's slices; a MoE model's with expert keys global (Note [expert optimizer state] in
    :mod:`ds_engine.moe_optimizer_checkpoint`)."""
    state = trainer.state_dict()
    if not engine.has_moe_layers:
        return state
    from ds_engine import moe_optimizer_checkpoint

    return moe_optimizer_checkpoint.globalize(engine, state)


def resolve_tag(load_dir: str, tag: Any) -> str | None:
    """The tag to load: the given one, or the content of ``latest`` (None, with a warning, if absent)."""
    if tag is not None:
        return str(tag)
    latest = layout.latest_path(load_dir)
    if not os.path.isfile(latest):
        logger.warning(
            "no checkpoint to load: %s does not exist (pass tag= to load a specific checkpoint)", latest
        )
        return None
    with open(latest, encoding="utf-8") as handle:
        return handle.read().strip()


def load(
    engine: CheckpointedEngine,
    load_dir: str,
    tag: Any,
    *,
    load_module_strict: bool,
    load_optimizer_states: bool,
    load_lr_scheduler_states: bool,
    load_module_only: bool,
    custom_load_fn: Callable[..., Any] | None = None,
) -> tuple[str | None, dict[str, Any] | None]:
    """Restore ``engine`` from a checkpoint; returns ``(path, client_state)`` or ``(None, None)``.

    ``custom_load_fn(src=saved module state dict, dst=engine.module)`` replaces the module's
    ``load_state_dict``. At stage 3 it runs with every parameter gathered, and what it writes on
    rank 0 goes back into the shards (``GatheredParameters(modifier_rank=0)``).
    """
    load_dir = os.fspath(load_dir)
    tag = resolve_tag(load_dir, tag)
    if tag is None:
        return None, None
    optimizer = engine.optimizer
    wants_optimizer = optimizer is not None and load_optimizer_states and not load_module_only
    mp = engine.get_model_parallel_rank()  # AutoTP: this tensor rank's files
    on_nvme = _states_on_nvme(optimizer)
    # states on NVMe: the model states file is mapped, not read (Note [bounded parameter checkpoints] in
    # ds_zero.stage3.nvme_params); refuses an incomplete tag
    opened = integrity.open_tag(load_dir, tag, wants_optimizer=wants_optimizer, mp_rank=mp, mapped=on_nvme)
    if opened is None:
        logger.warning("no checkpoint to load: %s does not exist", layout.model_states_path(load_dir, tag))
        return None, None
    path, state = opened.path, opened.state
    saved_mp, mp_size = int(state.get(layout.MP_WORLD_SIZE) or 1), engine.mp_world_size
    if saved_mp != mp_size:
        raise deepspeed_format.DeepSpeedCheckpointError(
            f"{path} was saved with tensor-parallel size {saved_mp} (tensor_parallel.autotp_size); this engine "
            f"runs {mp_size}. Resume at the same size, or export full weights with save_16bit_model and start "
            "from those"
        )
    placeholders = deepspeed_format.partitioned_placeholders(
        state[layout.MODULE], state.get(layout.PARAM_SHAPES)
    )
    if (
        wants_optimizer and engine.has_moe_layers
    ):  # expert slices to this rank's experts (Note [expert optimizer state])
        from ds_engine import moe_optimizer_checkpoint

        shards = moe_optimizer_checkpoint.optimizer_shards(engine, state, path, opened.optimizer_files)
    else:
        shards = (
            _optimizer_shards(state, path, opened.optimizer_files, mapped=on_nvme)
            if wants_optimizer or placeholders
            else []
        )
    if placeholders:  # a DeepSpeed stage-3 save: its weights live only in the optimizer partitions
        deepspeed_format.fill_partitioned_weights(
            state[layout.MODULE], placeholders, consolidate_fp32(shards)
        )
    if custom_load_fn is None:
        engine.module.load_state_dict(state[layout.MODULE], strict=load_module_strict)
    else:
        with _every_parameter_gathered(engine.module):
            custom_load_fn(src=state[layout.MODULE], dst=engine.module)
    if optimizer is not None:
        restored = False
        if wants_optimizer:
            restored = _load_optimizer(optimizer, shards, load_dir, tag)
        if not restored:
            optimizer.refresh_fp32_params()  # masters follow the loaded weights
    if load_module_only:
        return path, {}
    if (
        load_lr_scheduler_states
        and engine.lr_scheduler is not None
        and state.get(layout.LR_SCHEDULER) is not None
    ):
        engine.lr_scheduler.load_state_dict(state[layout.LR_SCHEDULER])
    engine.global_steps = int(state.get(layout.GLOBAL_STEPS, 0))
    engine.global_samples = int(
        state.get(layout.GLOBAL_SAMPLES, engine.global_steps * engine.train_batch_size())
    )
    engine.skipped_steps = int(state.get(layout.SKIPPED_STEPS, 0))
    client_state = {k: v for k, v in state.items() if k not in layout.ENGINE_KEYS}
    if on_nvme:  # the client's tensors are theirs to change: not views of the mapped file
        client_state = clone_tensors_for_torch_save(client_state)
    return path, client_state


def _every_parameter_gathered(module: nn.Module) -> AbstractContextManager[Any]:
    """Full parameters for a custom load function to write into (a no-op below stage 3)."""
    params = list(module.parameters())
    if not any(hasattr(p, "ds_id") for p in params):  # no stage-3 parameter: skip importing FSDP
        return nullcontext()
    from ds_zero import GatheredParameters

    return GatheredParameters(params, modifier_rank=0)


def _states_on_nvme(trainer: Trainer | None) -> bool:
    """Whether optimizer states or parameters live on NVMe, so the checkpoint's files are mapped rather
    than read (Note [mapped optimizer files] in ds_zero.deepspeed_format)."""
    offload = trainer.policy.offload if trainer is not None else None
    return offload is not None and "nvme" in (offload.optimizer_device, offload.param_device)


def _optimizer_shards(
    state: dict[str, Any], path: str, optimizer_files: list[str], *, mapped: bool = False
) -> list[dict[str, Any]]:
    """Every saved slice of optimizer state (Note [one slice format]): from the model states at ``path``
    or from ``optimizer_files`` (checked by :mod:`.integrity`); a checkpoint the reference DeepSpeed
    wrote is converted (:mod:`ds_zero.deepspeed_format`)."""
    saved = state.get(layout.OPTIMIZER)
    if saved is not None:
        if saved.get("format") != SLICES_FORMAT:
            raise deepspeed_format.DeepSpeedCheckpointError(
                f"{path}: its optimizer state is a plain torch state dict (a "
                "DeepSpeed stage-0 save), which is not read; load it with load_optimizer_states=False"
            )
        return [saved]
    return deepspeed_format.read_optimizer_shards(
        optimizer_files, state.get(layout.PARAM_SHAPES), mapped=mapped
    )


def _load_optimizer(trainer: Trainer, shards: list[dict[str, Any]], load_dir: str, tag: str) -> bool:
    """Hand the trainer every saved slice of optimizer state (Note [one slice format])."""
    if not shards:
        logger.warning(
            "checkpoint %s has no optimizer state; the optimizer starts fresh", os.path.join(load_dir, tag)
        )
        return False
    trainer.load_state_dict(shards)
    return True
