"""Optimizer state as per-parameter slices: the layout-free form that lets checkpoints reshard.

A rank saves, for every parameter range it owns, the fp32 master values and the optimizer state
tensors of that range, keyed by the parameter's name (its position when no name is known). Nothing
in a saved slice depends on the world size, the bucket size or the ZeRO stage, so a checkpoint saved
by N ranks at stage S loads on M ranks at stage S' by copying overlapping ranges; no conversion step.

Note [scalar state]: per-parameter scalars (Adam's ``step``) are equal across a param group's
parameters in every torch optimizer this project builds; they are saved once per group.

Note [side state]: a trainer may keep element-wise tensors of its own beside the optimizer's, shaped like
its master shards (ZenFlow's gradient accumulator). They ride in the same slices under keys starting
with :data:`SIDE_PREFIX`, so they reshard like Adam's moments, but they are never loaded into the
optimizer's state: :func:`load_shard_state_dict` hands them back to the trainer, and every other loader
skips them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import torch

FORMAT = "ds-slices-v1"
SIDE_PREFIX = "side:"  # Note [side state]


def is_side_key(key: str) -> bool:
    """Whether a saved state key is a trainer's side state rather than the optimizer's."""
    return key.startswith(SIDE_PREFIX)


class ShardSource(Protocol):
    """What a sharded trainer exposes for saving and loading (see ``ds_zero.stage12``)."""

    units: list[Any]  # FlatUnit, one per master
    masters: list[torch.nn.Parameter]  # this rank's fp32 master shard of each unit
    optimizer: torch.optim.Optimizer
    stage: int

    def publish(self) -> None: ...


def _hyperparams(group: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k != "params"}


def _split_state(state: Mapping[str, Any], numel: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Element-wise state tensors (sliceable) vs scalars (``step`` and friends)."""
    tensors, scalars = {}, {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.numel() == numel and value.dim() > 0:
            tensors[key] = value
        else:
            scalars[key] = value.item() if torch.is_tensor(value) else value
    return tensors, scalars


def shard_state_dict(
    opt: ShardSource,
    names: Mapping[int, str] | None = None,
    side: list[dict[str, torch.Tensor]] | None = None,
    *,
    state_of: Callable[[torch.Tensor], Mapping[str, Any]] | None = None,
    copy: Callable[[torch.Tensor], torch.Tensor] | None = None,
    bring: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, Any]:
    """This rank's optimizer state as slices. ``names`` maps parameter index -> model parameter name;
    ``side`` (one dict per master, tensors shaped like it) is the trainer's side state (Note [side state]).
    ``state_of(master)`` reads a master's optimizer state (default: the optimizer's own dict) and
    ``copy`` makes each saved slice (default: ``clone``); Note [bounded checkpoint I/O] in
    ds_zero.nvme_swapper uses both to save states that do not fit in memory. ``bring(master)`` runs before
    a master is read (its values may live on NVMe: Note [bounded parameter checkpoints] in
    ds_zero.stage3.nvme_params)."""
    read_state = state_of or (lambda m: opt.optimizer.state.get(m, {}))
    take = copy or torch.Tensor.clone  # a copy: a saved view would drag its whole storage into the file
    slices: list[dict[str, Any]] = []
    group_scalars: dict[int, dict[str, Any]] = {}
    for i, (unit, master) in enumerate(zip(opt.units, opt.masters)):
        if bring is not None:
            bring(master)
        tensors, scalars = _split_state(read_state(master), master.numel())
        if side is not None:
            tensors.update({SIDE_PREFIX + k: v.reshape(-1) for k, v in side[i].items()})
        if scalars:
            group_scalars.setdefault(unit.group_index, scalars)
        for slot, start, end, off in unit.owned_slices():
            length = end - start
            slices.append(
                {
                    "key": names[slot.index] if names else slot.index,
                    "shape": tuple(slot.shape),
                    "start": start,
                    "end": end,
                    "group": unit.group_index,
                    "fp32": take(master.detach()[off : off + length]),
                    "state": {k: take(v[off : off + length]) for k, v in tensors.items()},
                }
            )
    return {
        "format": FORMAT,
        "zero_stage": opt.stage,
        "partition_count": opt.units[0].world_size if opt.units else 1,
        "param_groups": [_hyperparams(g) for g in opt.optimizer.param_groups],
        "group_scalars": group_scalars,
        "slices": slices,
    }


def _index_slices(
    shards: Iterable[Mapping[str, Any]],
) -> tuple[dict[Any, list[Mapping[str, Any]]], Mapping[str, Any]]:
    by_key: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    first: Mapping[str, Any] = {}
    for shard in shards:
        if shard.get("format") != FORMAT:
            raise ValueError(f"optimizer shard has format {shard.get('format')!r}, expected {FORMAT!r}")
        first = first or shard
        for piece in shard["slices"]:
            # Replicated saves (stage 0 written by several ranks) repeat whole ranges: keep one copy.
            if not any(
                p["start"] == piece["start"] and p["end"] == piece["end"] for p in by_key[piece["key"]]
            ):
                by_key[piece["key"]].append(piece)
    return by_key, first


def _copy_overlaps(
    pieces: list[Mapping[str, Any]],
    start: int,
    end: int,
    field: str,
    out: torch.Tensor,
    state_key: str | None = None,
) -> int:
    """Fill ``out`` (the range [start, end) of one parameter) from saved pieces; return how many of its
    elements they covered. Pieces may overlap (a pipeline's tied module is saved by every stage holding
    it, sliced at each stage's own boundaries): the overlap holds equal values and is counted once."""
    covered = 0
    reached = start  # every element before this one is covered (pieces taken in order of start)
    for piece in sorted(pieces, key=lambda p: p["start"]):
        a, b = max(start, piece["start"]), min(end, piece["end"])
        if a >= b:
            continue
        src = piece[field] if state_key is None else piece[field][state_key]
        out[a - start : b - start].copy_(src[a - piece["start"] : b - piece["start"]])
        covered += max(0, b - max(a, reached))
        reached = max(reached, b)
    return covered


def load_shard_state_dict(
    opt: ShardSource,
    shards: Iterable[Mapping[str, Any]],
    names: Mapping[int, str] | None = None,
    *,
    load_optimizer_states: bool = True,
    put_state: Callable[[torch.Tensor, dict[str, Any]], None] | None = None,
    fresh_state: Callable[[torch.Tensor, list[str]], dict[str, torch.Tensor]] | None = None,
    bring: Callable[[torch.Tensor], None] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Load slices saved at any world size and stage into ``opt``'s own shards (the fp32 masters,
    and the optimizer state unless ``load_optimizer_states`` is False), then rebuild the parameters.
    ``put_state(master, state)`` stores a master's loaded state (default: into the optimizer's dict), one
    master at a time, filled into ``fresh_state(master, keys)`` (default: new zero tensors like the
    master). ``bring(master)`` runs before a master's values are written (as in :func:`shard_state_dict`).
    Returns the side state, one dict per master with the prefix stripped (Note [side
    state]); empty dicts when the checkpoint has none or ``load_optimizer_states`` is False."""
    store = put_state or opt.optimizer.state.__setitem__
    fresh = fresh_state or (lambda m, keys: {k: torch.zeros_like(m) for k in keys})
    by_key, first = _index_slices(shards)
    side: list[dict[str, torch.Tensor]] = []
    if load_optimizer_states:
        for g, saved in enumerate(first.get("param_groups", [])):
            if g < len(opt.optimizer.param_groups):
                opt.optimizer.param_groups[g].update(saved)
    for unit, master in zip(opt.units, opt.masters):
        if bring is not None:
            bring(master)
        state_keys = _state_keys(by_key, unit, names) if load_optimizer_states else []
        optim_keys = [k for k in state_keys if not is_side_key(k)]
        new_state = fresh(master, optim_keys) if optim_keys else {}
        new_state.update({k: torch.zeros_like(master) for k in state_keys if is_side_key(k)})
        for slot, start, end, off in unit.owned_slices():
            key = names[slot.index] if names else slot.index
            pieces = by_key.get(key)
            if not pieces:
                raise KeyError(f"checkpoint has no optimizer state for parameter {key!r}")
            view = master.data[off : off + end - start]
            if _copy_overlaps(pieces, start, end, "fp32", view) != end - start:
                raise ValueError(f"checkpoint covers only part of parameter {key!r}")
            for k, tensor in new_state.items():
                _copy_overlaps(pieces, start, end, "state", tensor[off : off + end - start], k)
        scalars = first.get("group_scalars", {}).get(unit.group_index, {}) if load_optimizer_states else {}
        side.append({k[len(SIDE_PREFIX) :]: new_state.pop(k) for k in list(new_state) if is_side_key(k)})
        if new_state or scalars:
            store(
                master,
                {
                    **new_state,
                    **{k: torch.tensor(float(v)) for k, v in scalars.items()},
                },
            )
    opt.publish()
    return side


def _state_keys(
    by_key: Mapping[Any, list[Mapping[str, Any]]], unit: Any, names: Mapping[int, str] | None
) -> list[str]:
    for slot in unit.slots:
        pieces = by_key.get(names[slot.index] if names else slot.index)
        if pieces:
            return list(pieces[0]["state"])
    return []


def consolidate_fp32(shards: Iterable[Mapping[str, Any]]) -> dict[Any, torch.Tensor]:
    """Full fp32 parameters from every rank's slices: key -> tensor of the parameter's shape."""
    by_key, _ = _index_slices(shards)
    out = {}
    for key, pieces in by_key.items():
        shape = tuple(pieces[0]["shape"])
        numel = int(torch.Size(shape).numel())
        flat = torch.empty(numel, dtype=torch.float32)
        if _copy_overlaps(pieces, 0, numel, "fp32", flat) != numel:
            raise ValueError(f"the checkpoint's shards cover only part of parameter {key!r}")
        out[key] = flat.view(shape)
    return out


def full_optimizer_state(shards: Iterable[Mapping[str, Any]]) -> dict[Any, dict[str, torch.Tensor]]:
    """Full (unsharded) per-parameter optimizer state, for loading into an unsharded optimizer."""
    by_key, first = _index_slices(shards)
    scalars = first.get("group_scalars", {})
    out: dict[Any, dict[str, Any]] = {}
    for key, pieces in by_key.items():
        numel = int(torch.Size(tuple(pieces[0]["shape"])).numel())
        state: dict[str, Any] = {}
        for k in (k for k in pieces[0]["state"] if not is_side_key(k)):
            full = torch.empty(numel, dtype=pieces[0]["state"][k].dtype)
            _copy_overlaps(pieces, 0, numel, "state", full, k)
            state[k] = full.view(tuple(pieces[0]["shape"]))
        for k, v in scalars.get(pieces[0]["group"], {}).items():
            state[k] = torch.tensor(float(v))
        out[key] = state
    return out
