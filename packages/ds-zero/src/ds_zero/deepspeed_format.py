"""Reading checkpoints the reference DeepSpeed wrote (ZeRO stages 1-3): to resume from them, or to
consolidate them with ``zero_to_fp32``.

DeepSpeed's optimizer files hold flat fp32 partitions and the optimizer state of those partitions,
plus three pickled DeepSpeed objects (the loss scaler, the ZeRO stage enum, fragment addresses). This
module reads them with ``weights_only=True`` — the three names are mapped onto inert records, so no
DeepSpeed code is needed and none can run — and cuts the partitions into this project's
per-parameter slices (:mod:`ds_zero.sharded_state`), which every stage at every world size loads.

The layouts, per rank file ``zero_pp_rank_<r>_mp_rank_00_optim_states.pt`` (``bf16_zero_pp_rank_...``
from DeepSpeed's bf16 optimizer, same layout):

* stages 1-2: per param group, one flat partition of ``P`` elements (``single_partition_of_fp32_groups``,
  stored without its padding, ``group_paddings``) covering elements ``[r*P, (r+1)*P)`` of the group's
  parameters laid end to end (in ``param_shapes`` order); ``param_slice_mappings`` names each
  parameter piece in it (``start`` within the partition, ``numel``); the state (``exp_avg``...) of the
  partition is ``base_optimizer_state["state"][group]``.
* stage 3: every parameter split on its own into ``ceil(numel / N)``-element pieces (the last one
  padded); rank ``r`` keeps piece ``r`` of each, laid end to end over all groups in ``param_shapes``
  order, in ``fp32_flat_groups`` (sub-groups of that sequence) and the matching sub-group states in
  ``optimizer_state_dict["state"]``.

The model-states file of a stage-3 checkpoint holds empty tensors for the partitioned weights
(:func:`partitioned_placeholders`); :func:`fill_partitioned_weights` puts the full weights, rebuilt
from the slices, in their place.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import zipfile
from collections.abc import Iterable
from typing import Any

import torch

from ds_zero import checkpoint_names, load_errors
from ds_zero.sharded_state import FORMAT as SLICES_FORMAT

OPTIMIZER_STATE_DICT = "optimizer_state_dict"  # the key of a rank file's optimizer state (DeepSpeed's)
_RANK_FILE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")
_HYPERPARAMETERS = ("lr", "betas", "eps", "weight_decay")  # what carries over into a torch param group


class DeepSpeedCheckpointError(ValueError):
    """A DeepSpeed checkpoint this importer cannot read; the message says which file and why."""


class _Record:
    """An inert stand-in for a pickled DeepSpeed object: its fields, nothing else."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _LossScaler(_Record):
    pass


class _FragmentAddress(_Record):
    pass


class _ZeroStage(int):
    pass


_STAND_INS = [
    (_LossScaler, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (_LossScaler, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
    (_FragmentAddress, "deepspeed.utils.tensor_fragment.fragment_address"),
    (_ZeroStage, "deepspeed.runtime.zero.config.ZeroStageEnum"),
]


def load_deepspeed_file(path: str, *, mapped: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with DeepSpeed's three pickled classes read as records.
    ``mapped``: the tensors are shared mappings of the file (Note [mapped optimizer files]), which the
    caller must only read."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # renamed safe globals came with torch 2.6
        raise DeepSpeedCheckpointError(f"{path}: reading checkpoints DeepSpeed wrote needs torch >= 2.6")
    with safe_globals(_STAND_INS):
        try:
            if mapped and zipfile.is_zipfile(path):
                with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED):
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - name the file and torch's reason, never its weights_only advice
            if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.filename is not None):
                raise  # out of memory, or a missing / unreadable file, which names itself
            if "can't allocate memory" in str(exc):  # torch's allocator: not a damaged file
                raise MemoryError(f"{path}: out of memory while reading it") from exc
            unsafe, reason = load_errors.describe(exc)
            if unsafe:
                raise DeepSpeedCheckpointError(
                    f"{path}: cannot be read safely (weights_only=True): {reason}"
                ) from None
            raise DeepSpeedCheckpointError(
                f"{path} is truncated or not a torch checkpoint: {reason}"
            ) from None


def is_deepspeed_optimizer_file(content: Any) -> bool:
    """Whether a loaded ``*_optim_states.pt`` is DeepSpeed's (not this project's slices)."""
    osd = content.get(OPTIMIZER_STATE_DICT) if isinstance(content, dict) else None
    return isinstance(osd, dict) and osd.get("format") != SLICES_FORMAT and "zero_stage" in osd


def _rank_of(path: str) -> int:
    match = _RANK_FILE.search(os.path.basename(path))
    if match is None:
        raise DeepSpeedCheckpointError(f"{path}: not a zero_pp_rank_<r>_mp_rank_00_optim_states.pt file")
    return int(match.group(1))


def _scalars(state: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in state.items() if not torch.is_tensor(v) or v.dim() == 0}


def _hyperparameters(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: g[k] for k in _HYPERPARAMETERS if k in g} for g in groups]


def _stage12_slices(path: str, osd: dict[str, Any], shapes: list[dict[str, torch.Size]]) -> dict[str, Any]:
    rank = _rank_of(path)
    if any(any(pad for pad in group) for group in osd.get("param_alignment_paddings", [])):
        raise DeepSpeedCheckpointError(
            f"{path}: written with parameter_alignment; such checkpoints are not read"
        )
    base = osd["base_optimizer_state"]
    slices, group_scalars = [], {}
    for g, mapping in enumerate(osd["param_slice_mappings"]):
        flat = osd["single_partition_of_fp32_groups"][g]
        stored = flat.numel()
        size = stored + int(
            osd["group_paddings"][g]
        )  # the last rank stores its partition without the padding
        state = base["state"].get(g, {})
        # the states keep the padding (P elements); only the first ``stored`` are read
        tensors = {
            k: v for k, v in state.items() if torch.is_tensor(v) and v.dim() > 0 and v.numel() >= stored
        }
        group_scalars[g] = _scalars(state)
        starts, offset = {}, 0
        for name, shape in shapes[g].items():
            starts[name] = offset
            offset += int(torch.Size(shape).numel())
        for name, where in mapping.items():
            at, numel = int(where.start), int(where.numel)
            first = rank * size + at - starts[name]
            slices.append(
                {
                    "key": name,
                    "shape": tuple(shapes[g][name]),
                    "start": first,
                    "end": first + numel,
                    "group": g,
                    "fp32": flat[at : at + numel].clone(),
                    "state": {k: v[at : at + numel].clone() for k, v in tensors.items()},
                }
            )
    return {
        "format": SLICES_FORMAT,
        "zero_stage": int(osd["zero_stage"]),
        "partition_count": osd["partition_count"][0],
        "param_groups": _hyperparameters(base["param_groups"]),
        "group_scalars": group_scalars,
        "slices": slices,
    }


def _stage3_slices(path: str, osd: dict[str, Any], shapes: list[dict[str, torch.Size]]) -> dict[str, Any]:
    rank, world = _rank_of(path), int(osd["partition_count"])
    inner = osd["optimizer_state_dict"]
    flat = torch.cat([t.reshape(-1) for t in osd["fp32_flat_groups"]])
    sub_states = [inner["state"].get(i, {}) for i in range(len(osd["fp32_flat_groups"]))]
    keys = [k for k, v in sub_states[0].items() if torch.is_tensor(v) and v.dim() > 0] if sub_states else []
    states = {k: torch.cat([s[k].reshape(-1) for s in sub_states]) for k in keys}
    scalars = _scalars(sub_states[0]) if sub_states else {}
    slices, offset = [], 0
    for g, group in enumerate(shapes):
        for name, shape in group.items():
            numel = int(torch.Size(shape).numel())
            piece = math.ceil(numel / world)
            first, last = min(rank * piece, numel), min((rank + 1) * piece, numel)
            if offset + piece > flat.numel():
                raise DeepSpeedCheckpointError(
                    f"{path}: its fp32 partition is shorter than the parameters "
                    f"param_shapes lists (at {name!r})"
                )
            if last > first:
                length = last - first
                slices.append(
                    {
                        "key": name,
                        "shape": tuple(shape),
                        "start": first,
                        "end": last,
                        "group": g,
                        "fp32": flat[offset : offset + length].clone(),
                        "state": {k: v[offset : offset + length].clone() for k, v in states.items()},
                    }
                )
            offset += piece
    return {
        "format": SLICES_FORMAT,
        "zero_stage": 3,
        "partition_count": world,
        "param_groups": _hyperparameters(inner["param_groups"]),
        "group_scalars": {g: scalars for g in range(len(shapes))},
        "slices": slices,
    }


def slices_from_deepspeed(path: str, content: dict[str, Any], param_shapes: Any) -> dict[str, Any]:
    """One DeepSpeed rank file (already loaded) as this project's slices."""
    if not param_shapes:
        raise DeepSpeedCheckpointError(
            f"{path}: the checkpoint's model states hold no param_shapes to name its partitions with"
        )
    shapes = param_shapes if isinstance(param_shapes, list) else [param_shapes]
    osd = content[OPTIMIZER_STATE_DICT]
    stage = int(osd["zero_stage"])
    if stage in (1, 2):
        return _stage12_slices(path, osd, shapes)
    if stage == 3:
        return _stage3_slices(path, osd, shapes)
    raise DeepSpeedCheckpointError(f"{path}: ZeRO stage {stage} optimizer files are not read")


def rank_file_paths(tag_dir: str, dp_world_size: int) -> list[str]:
    """The optimizer file every data-parallel rank of a DeepSpeed save writes, present or not:
    ``zero_pp_rank_<r>_mp_rank_00_optim_states.pt`` for ``r < dp_world_size`` (``bf16_``-prefixed when
    the tag holds DeepSpeed bf16 optimizer files). The caller checks which exist."""
    names = os.listdir(tag_dir) if os.path.isdir(tag_dir) else []
    prefix = (
        "bf16_"
        if any(n.startswith("bf16_zero_pp_rank_") and n.endswith("_optim_states.pt") for n in names)
        else ""
    )
    return [
        os.path.join(tag_dir, prefix + checkpoint_names.zero_optim_states(r)) for r in range(dp_world_size)
    ]


def read_optimizer_shards(
    paths: Iterable[str], param_shapes: Any, *, mapped: bool = False
) -> list[dict[str, Any]]:
    """The optimizer state of rank files written by this project or by DeepSpeed, as this project's
    slices. Every file is read with ``weights_only=True`` (DeepSpeed's three names as records).

    Note: [mapped optimizer files] ``mapped`` (optimizer states offloaded to NVMe, Note [bounded
    checkpoint I/O] in ds_zero.nvme_swapper) maps each file's tensors shared instead of reading them
    into private memory: a checkpoint larger than the memory limit then loads, the page cache holding
    what is read. Shared, because a private writable mapping counts against RLIMIT_DATA like the memory
    it stands for; so the loaded slices must only be read (the slice loaders copy out of them, and a
    DeepSpeed-format file is converted into fresh tensors)."""
    shards = []
    for path in paths:
        content = load_deepspeed_file(path, mapped=mapped)
        if is_deepspeed_optimizer_file(content):
            shards.append(slices_from_deepspeed(path, content, param_shapes))
            continue
        osd = content.get(OPTIMIZER_STATE_DICT) if isinstance(content, dict) else None
        if osd is None and isinstance(
            content, dict
        ):  # an MoE stage-0 save's expp_rank_<ep> file: {"optimizer": ...}
            osd = content.get("optimizer")
        if not isinstance(osd, dict) or osd.get("format") != SLICES_FORMAT:
            raise DeepSpeedCheckpointError(
                f"{path}: holds no optimizer state that this project or DeepSpeed wrote"
            )
        shards.append(osd)
    return shards


def partitioned_placeholders(module_state: dict[str, Any], param_shapes: Any) -> list[str]:
    """Names whose saved tensor is empty while ``param_shapes`` gives the parameter elements: the
    placeholders a DeepSpeed stage-3 save leaves in its model states."""
    groups = param_shapes if isinstance(param_shapes, list) else [param_shapes] if param_shapes else []
    shapes = {name: shape for group in groups for name, shape in group.items()}
    return [
        name
        for name, value in module_state.items()
        if name in shapes
        and torch.is_tensor(value)
        and value.numel() == 0
        and torch.Size(shapes[name]).numel()
    ]


def fill_partitioned_weights(
    module_state: dict[str, Any], names: list[str], full: dict[str, torch.Tensor]
) -> None:
    """Put the full weights (rebuilt from the optimizer partitions) in place of the placeholders ``names``."""
    for name in names:
        if name not in full:
            raise DeepSpeedCheckpointError(f"the checkpoint's optimizer files hold no weights for {name!r}")
        module_state[name] = full[name].to(module_state[name].dtype)
