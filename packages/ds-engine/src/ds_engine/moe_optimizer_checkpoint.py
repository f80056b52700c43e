"""Optimizer state of MoE models in checkpoints: expert slices keyed by *global* expert, in DeepSpeed's files.

Note: [expert optimizer state] Every stage saves its optimizer state as per-parameter slices keyed by the
parameter's name (Note [one slice format] in :mod:`ds_engine.checkpoint.engine_io`). An expert parameter's
name carries its *local* index (``...deepspeed_experts.0.weight`` is global expert 0 on ep rank 0 and
global expert 2 on ep rank 1 at 4 experts, ep 2), so before saving, each expert slice's key is rewritten to
the global index (global = ep rank x local count + local, as the expert files of
:mod:`ds_engine.moe_checkpoint` do), and on load every saved slice is read, the slices of this rank's
global experts are renamed back to its local indices and the others dropped. The slice format then does
the rest: each expert's Adam moments and fp32 master follow it to whichever rank holds it, sharded over
any expert-data-parallel group, so a checkpoint resumes at the same or another ep size and data-parallel
size (same number of experts per layer; otherwise the expert files cannot load either).

Files, as DeepSpeed names them: at stage 0 the first rank of each expert-data-parallel group (of the
largest ep size) writes ``expp_rank_<ep>_mp_rank_00_optim_states.pt`` = ``{"optimizer": slices}``
(the non-expert parameters and that ep rank's experts) and the model-states file holds no optimizer; at
stages 1-2 every rank's ``zero_pp_rank_<dp>_mp_rank_00_optim_states.pt`` holds its slices, expert keys
global. Each saved state carries :data:`META_KEY`; a checkpoint without it (saved before expert keys were
global, or by DeepSpeed, whose optimizer files hold local expert state) is refused with a message
suggesting ``load_optimizer_states=False``.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from ds_engine.checkpoint import layout
from ds_engine.checkpoint.engine_state import CheckpointedEngine
from ds_parallel.moe import expert_groups
from ds_zero import checkpoint_names
from ds_zero.deepspeed_format import DeepSpeedCheckpointError, read_optimizer_shards

if TYPE_CHECKING:
    from ds_parallel.moe.layer import MoE

META_KEY = "moe_expert_keys"  # {"keys": "global", "num_experts": [...], "ep_size": [...], "dp_world_size": N}
EXPERTS_PREFIX = "deepspeed_moe.experts.deepspeed_experts."
WEIGHTS_ONLY = "load it with load_optimizer_states=False (every weight and the LR schedule are restored)"
# Hyperparameters that name a group's place in this run's layout (``ep_size_<N>``), not training state.
_LAYOUT_GROUP_KEYS = ("name", "moe")


def _layers(engine: CheckpointedEngine) -> list[tuple[str, MoE]]:
    from ds_parallel.moe.layer import MoE

    return [
        (f"{name}.{EXPERTS_PREFIX}" if name else EXPERTS_PREFIX, m)
        for name, m in engine.module.named_modules()
        if isinstance(m, MoE)
    ]


def _split_key(key: Any, prefixes: list[str]) -> tuple[int, int, str] | None:
    """``(layer index, expert index, rest)`` of an expert parameter's key, or None for a shared one."""
    if not isinstance(key, str):
        return None
    for layer_id, prefix in enumerate(prefixes):
        if key.startswith(prefix):
            m = re.match(r"(\d+)\.(.*)", key[len(prefix) :])
            if m is not None:
                return layer_id, int(m.group(1)), m.group(2)
    return None


def _meta(engine: CheckpointedEngine) -> dict[str, Any]:
    layers = [m for _, m in _layers(engine)]
    return {
        "keys": "global",
        "num_experts": [m.num_experts for m in layers],
        "ep_size": [m.ep_size for m in layers],
        "dp_world_size": engine.seq_dp_world_size,
    }


def globalize(engine: CheckpointedEngine, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` (this rank's slices) with expert keys made global and :data:`META_KEY` added (module note)."""
    layers = _layers(engine)
    prefixes = [p for p, _ in layers]
    slices = []
    for piece in state["slices"]:
        parts = _split_key(piece["key"], prefixes)
        if parts is not None:
            layer_id, local_id, rest = parts
            layer = layers[layer_id][1]
            global_id = (
                expert_groups._get_expert_parallel_rank(layer.expert_group_name) * layer.num_local_experts
                + local_id
            )
            piece = {**piece, "key": f"{prefixes[layer_id]}{global_id}.{rest}"}
        slices.append(piece)
    return {**state, "slices": slices, META_KEY: _meta(engine)}


def localize(engine: CheckpointedEngine, shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every saved shard reduced to the shared slices and this rank's experts, renamed to local indices."""
    layers = _layers(engine)
    prefixes = [p for p, _ in layers]
    mine = []
    for _, layer in layers:
        first = expert_groups._get_expert_parallel_rank(layer.expert_group_name) * layer.num_local_experts
        mine.append(range(first, first + layer.num_local_experts))
    out = []
    for shard in shards:
        slices = []
        for piece in shard["slices"]:
            parts = _split_key(piece["key"], prefixes)
            if parts is not None:
                layer_id, global_id, rest = parts
                if global_id not in mine[layer_id]:
                    continue  # another ep rank's expert
                piece = {**piece, "key": f"{prefixes[layer_id]}{global_id - mine[layer_id].start}.{rest}"}
            slices.append(piece)
        groups = [
            {k: v for k, v in g.items() if k not in _LAYOUT_GROUP_KEYS} for g in shard.get("param_groups", [])
        ]
        out.append({**shard, "slices": slices, "param_groups": groups})
    return out


def expp_path(save_dir: str, tag: str, mp_rank: int) -> str | None:
    """Stage 0: this rank's ``expp_rank_<ep>_mp_rank_<mp>_optim_states.pt``, or None where another rank of
    its expert-data-parallel group (of the largest ep size) writes that ep rank's file (module note)."""
    name = expert_groups._get_max_expert_size_name()
    if expert_groups._get_expert_data_parallel_rank(name) != 0:
        return None
    ep_rank = expert_groups._get_expert_parallel_rank(name)
    return os.path.join(layout.tag_dir(save_dir, tag), checkpoint_names.expert_optim_states(ep_rank, mp_rank))


def _read(state: dict[str, Any], files: list[str]) -> list[dict[str, Any]]:
    """The saved optimizer states: of the optimizer files (expp_rank or ZeRO rank files), else the model states'."""
    if files:
        return read_optimizer_shards(files, state.get(layout.PARAM_SHAPES))
    return [state[layout.OPTIMIZER]] if state.get(layout.OPTIMIZER) is not None else []


def optimizer_shards(
    engine: CheckpointedEngine, state: dict[str, Any], path: str, files: list[str]
) -> list[dict[str, Any]]:
    """This rank's share of a MoE checkpoint's optimizer state (module note); ``[]`` when it holds none.

    Sets ``engine.moe_optimizer_loaded`` when it returns state. Raises :class:`DeepSpeedCheckpointError`
    for a checkpoint whose expert optimizer state is not keyed by global expert, or whose layers have
    other numbers of experts, naming what was saved and asked.
    """
    shards = _read(state, files)
    if not shards:
        return []
    folder = os.path.dirname(path)
    here = _meta(engine)
    for shard in shards:
        meta = shard.get(META_KEY) if isinstance(shard, dict) else None
        if not isinstance(meta, dict) or meta.get("keys") != "global":
            raise DeepSpeedCheckpointError(
                f"{folder}: its optimizer state of expert parameters is not keyed by global expert (saved by "
                f"DeepSpeed or by an earlier version of this project), so it cannot be matched to this run's experts "
                f"(ep_size {here['ep_size']}); {WEIGHTS_ONLY}"
            )
        if list(meta.get("num_experts", [])) != here["num_experts"]:
            raise DeepSpeedCheckpointError(
                f"{folder}: optimizer state saved with num_experts {meta.get('num_experts')} per MoE layer (ep_size "
                f"{meta.get('ep_size')}, dp {meta.get('dp_world_size')}); this run has num_experts "
                f"{here['num_experts']} (ep_size {here['ep_size']}, dp {here['dp_world_size']}); {WEIGHTS_ONLY}"
            )
    # the experts' fp32 masters come from these slices: the engine must not re-take them from the
    # (possibly 16-bit) weights after loading the expert files
    engine.moe_optimizer_loaded = True
    return localize(engine, shards)


__all__ = ["META_KEY", "expp_path", "globalize", "localize", "optimizer_shards"]
