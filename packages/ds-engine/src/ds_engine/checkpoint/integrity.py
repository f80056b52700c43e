"""Opening a checkpoint tag for a load: which files the load reads, and refusing a tag that lacks them.

Three kinds of tag (Note [complete or refused] in :mod:`.manifest`):

* with ``ds_manifest.json`` (a finished save of this project): every file the load reads must be on
  disk with the recorded size and CRC-32; the optimizer files are the ones the manifest lists (stale
  files of an earlier save of the same tag are ignored).
* model states that name a manifest which is not there: an unfinished save of this project; refused.
* model states without that key: written by the reference DeepSpeed (or by this project before it wrote
  manifests). Each data-parallel rank's optimizer file (``dp_world_size`` from the model states) must
  exist when the optimizer state is read.

Loading the weights only (``load_optimizer_states=False`` / ``load_module_only=True``) reads no
optimizer file, so it works on a tag whose optimizer files are gone: an explicit choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ds_engine.checkpoint import layout, manifest
from ds_engine.checkpoint.files import CorruptCheckpointError, safe_load
from ds_engine.checkpoint.manifest import IncompleteCheckpointError
from ds_zero import deepspeed_format

WEIGHTS_ONLY = (
    "to take the model weights only, load with load_optimizer_states=False or load_module_only=True"
)
EARLIER_TAG = "load an earlier tag (pass tag=...), or save this one again"


@dataclass(frozen=True)
class OpenedTag:
    """A tag checked for a load: its model-states file, that file's content, and the optimizer files
    the load must read (empty when the optimizer state is in the model states or not wanted)."""

    path: str
    state: dict[str, Any]
    optimizer_files: list[str]


def _visible_files(folder: str) -> list[str]:
    """The tag folder's files, without the temporaries of an interrupted write (dot-files)."""
    try:
        return sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _saved_zero_stage(ds_config: Any) -> int:
    zero = ds_config.get("zero_optimization") if isinstance(ds_config, dict) else None
    if isinstance(zero, dict):
        return int(zero.get("stage", 0) or 0)
    return 0


def open_tag(
    load_dir: str, tag: str, *, wants_optimizer: bool, mp_rank: int = 0, mapped: bool = False
) -> OpenedTag | None:
    """Check ``<load_dir>/<tag>`` for a load and read its model states; None when the tag does not exist.
    ``mapped``: the model states' tensors are shared mappings of the file (``safe_load``), to be read only.

    Raises :class:`IncompleteCheckpointError` (or ``CorruptCheckpointError``) naming the tag and each
    missing or damaged file, with what to do.
    """
    folder = layout.tag_dir(load_dir, tag)
    saved = manifest.read(load_dir, tag)
    if saved is not None:
        return _open_with_manifest(load_dir, tag, saved, wants_optimizer, mp_rank, mapped)
    path = layout.find_model_states(load_dir, tag)
    if path is None:
        if _visible_files(folder):
            raise IncompleteCheckpointError(
                f"checkpoint {folder} is incomplete: it holds {', '.join(_visible_files(folder))} but no model "
                f"states file and no {layout.MANIFEST} (the save did not finish); {EARLIER_TAG}"
            )
        return None
    state = safe_load(path, mapped=mapped)
    if state.get(layout.MANIFEST_KEY):
        raise IncompleteCheckpointError(
            f"checkpoint {folder} is incomplete: {os.path.basename(path)} was written by a save that ends with "
            f"{layout.MANIFEST}, which is missing (the save was interrupted or failed); {EARLIER_TAG}"
        )
    return OpenedTag(path, state, _deepspeed_optimizer_files(folder, state, wants_optimizer))


def _open_with_manifest(
    load_dir: str,
    tag: str,
    saved: dict[str, Any],
    wants_optimizer: bool,
    mp_rank: int = 0,
    mapped: bool = False,
) -> OpenedTag:
    # the model states a load reads: rank 0's (stages 0-2, or stage 3's with the gathered module); with
    # AutoTP, this tensor rank's (mp_rank_<tp>) and only its optimizer files
    candidates = (
        layout.model_states_path(load_dir, tag, mp_rank),
        layout.zero3_model_states_path(load_dir, tag, 0),
        layout.model_states_path(load_dir, tag),
    )  # a save at another tensor size: the load refuses it
    model = next((os.path.basename(p) for p in candidates if os.path.basename(p) in saved["files"]), None)
    if model is None:
        raise CorruptCheckpointError(f"{layout.manifest_path(load_dir, tag)} lists no model states file")
    manifest.verify(load_dir, tag, saved, [model], advice=EARLIER_TAG)
    optim = manifest.names_of(saved, manifest.OPTIM_STATES) if wants_optimizer else []
    optim = [n for n in optim if f"_mp_rank_{mp_rank:02d}_" in n]
    manifest.verify(load_dir, tag, saved, optim, advice=WEIGHTS_ONLY)
    folder = layout.tag_dir(load_dir, tag)
    return OpenedTag(
        os.path.join(folder, model),
        safe_load(os.path.join(folder, model), mapped=mapped),
        [os.path.join(folder, n) for n in optim],
    )


def _deepspeed_optimizer_files(folder: str, state: dict[str, Any], wants_optimizer: bool) -> list[str]:
    """Every data-parallel rank's optimizer file of a manifest-less tag, when the load reads them."""
    placeholders = deepspeed_format.partitioned_placeholders(
        state.get(layout.MODULE) or {}, state.get(layout.PARAM_SHAPES)
    )
    if not (wants_optimizer or placeholders) or state.get(layout.OPTIMIZER) is not None:
        return []
    expected = deepspeed_format.rank_file_paths(folder, int(state.get(layout.DP_WORLD_SIZE) or 1))
    present = [p for p in expected if os.path.isfile(p)]
    sharded = (
        state.get(layout.PARAM_SHAPES) is not None
        or bool(present)
        or _saved_zero_stage(state.get(layout.DS_CONFIG)) > 0
    )
    if not sharded:
        return []  # saved without any optimizer state (no optimizer): the load says so and starts it fresh
    missing = [p for p in expected if p not in present]
    if missing:
        advice = WEIGHTS_ONLY if not placeholders else "its weights live in those files: " + EARLIER_TAG
        raise IncompleteCheckpointError(
            f"checkpoint {folder} is incomplete: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing ({len(missing)} of the {len(expected)} optimizer files "
            f"its {len(expected)} data-parallel ranks wrote); {advice}"
        )
    return expected
