"""Expert weights in checkpoints, in DeepSpeed's MoE layout.

Note: [expert files] Each MoE layer ``L`` (numbered in module order) writes one file per *global* expert
``E``: ``<tag>/layer_<L>_expert_<E>_mp_rank_00_model_states.pt``, holding that expert's entries of the
module state dict with the expert's global index in the key (``...deepspeed_experts.<E>.weight``). The
first rank of each expert-data-parallel group writes its experts' files, so every expert is written once.
Loading maps global experts back to this rank's local ones (global = ep rank x local count + local), so a
checkpoint resumes at the same or another expert-parallel size as long as the number of experts per layer
is unchanged (as in DeepSpeed); a missing expert file is a clear error. The model-states file still holds
rank 0's module state; its expert entries are overwritten from the expert files on load.

Optimizer states of expert parameters are saved keyed by global expert too (Note [expert optimizer state]
in :mod:`ds_engine.moe_optimizer_checkpoint`).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import torch

import ds_comm
from ds_engine.checkpoint import layout
from ds_engine.checkpoint.engine_state import CheckpointedEngine
from ds_engine.checkpoint.files import atomic_torch_save
from ds_parallel.moe import expert_groups
from ds_zero import checkpoint_names
from ds_zero.deepspeed_format import DeepSpeedCheckpointError

if TYPE_CHECKING:
    from ds_parallel.moe.layer import MoE

EXPERTS_PREFIX = "deepspeed_moe.experts.deepspeed_experts."


def expert_ckpt_name(checkpoints_path: str, layer_id: int, expert_id: int, tag: Any, mp_rank: int = 0) -> str:
    """DeepSpeed's ``_get_expert_ckpt_name`` path (Note [expert files])."""
    return os.path.join(
        checkpoints_path,
        "" if tag is None else str(tag),
        checkpoint_names.expert_model_states(layer_id, expert_id, mp_rank),
    )


def _moe_modules(module: torch.nn.Module) -> list[tuple[str, MoE]]:
    from ds_parallel.moe.layer import MoE

    return [(name, m) for name, m in module.named_modules() if isinstance(m, MoE)]


def _ep_rank(layer: MoE) -> int:
    return expert_groups._get_expert_parallel_rank(layer.expert_group_name)


def save_experts(engine: CheckpointedEngine, save_dir: str, tag: Any) -> None:
    """Write this rank's expert files (first rank of each expert-data-parallel group); collective."""
    tag = str(tag) if tag is not None else layout.default_tag(engine.global_steps)
    os.makedirs(layout.tag_dir(save_dir, tag), exist_ok=True)
    for layer_id, (name, layer) in enumerate(_moe_modules(engine.module)):
        if expert_groups._get_expert_data_parallel_rank(layer.expert_group_name) != 0:
            continue
        prefix = f"{name}.{EXPERTS_PREFIX}" if name else EXPERTS_PREFIX
        per_expert: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in layer.state_dict(prefix=f"{name}." if name else "").items():
            m = re.match(re.escape(prefix) + r"(\d+)\.(.*)", key)
            if m is None:
                continue
            global_id = _ep_rank(layer) * layer.num_local_experts + int(m.group(1))
            per_expert.setdefault(global_id, {})[f"{prefix}{global_id}.{m.group(2)}"] = value.detach().clone()
        for global_id, state in per_expert.items():
            atomic_torch_save(state, expert_ckpt_name(save_dir, layer_id, global_id, tag))
    ds_comm.barrier()


def load_experts(engine: CheckpointedEngine, model_states_path: str) -> None:
    """Overwrite this rank's local experts from the expert files beside ``model_states_path``."""
    tag_dir = os.path.dirname(model_states_path)
    for layer_id, (name, layer) in enumerate(_moe_modules(engine.module)):
        prefix = f"{name}.{EXPERTS_PREFIX}" if name else EXPERTS_PREFIX
        local_state: dict[str, torch.Tensor] = {}
        for local_id in range(layer.num_local_experts):
            global_id = _ep_rank(layer) * layer.num_local_experts + local_id
            path = expert_ckpt_name(tag_dir, layer_id, global_id, None)
            if not os.path.isfile(path):
                raise DeepSpeedCheckpointError(
                    f"{path} is missing: MoE layer {layer_id} ({name}) needs expert {global_id} of {layer.num_experts}; "
                    "a checkpoint resumes at another ep_size only with the same num_experts per layer"
                )
            saved = torch.load(path, map_location="cpu", weights_only=True)
            for key, value in saved.items():
                local_state[key.replace(f"{prefix}{global_id}.", f"{prefix}{local_id}.", 1)] = value
        params: dict[str, torch.Tensor] = dict(engine.module.named_parameters())
        params.update(engine.module.named_buffers())
        with torch.no_grad():
            for key, value in local_state.items():
                if key not in params:
                    raise DeepSpeedCheckpointError(
                        f"expert entry {key} of the checkpoint has no parameter here"
                    )
                params[key].copy_(value)


def shared_weights_loader(strict: bool) -> Any:
    """A ``custom_load_fn`` for the model-states file: every entry but the experts' (which come from the
    expert files, and whose local indices there are rank 0's), strict about the rest when ``strict``."""

    def load(src: dict[str, Any], dst: torch.nn.Module) -> None:
        result = dst.load_state_dict({k: v for k, v in src.items() if EXPERTS_PREFIX not in k}, strict=False)
        missing = [k for k in result.missing_keys if EXPERTS_PREFIX not in k]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(dst).__name__}: missing keys {missing}, "
                f"unexpected keys {result.unexpected_keys}"
            )

    return load


__all__ = ["expert_ckpt_name", "load_experts", "save_experts", "shared_weights_loader"]
