"""The file names of DeepSpeed's checkpoint layout, defined once.

ds-engine writes these files (:mod:`ds_engine.checkpoint.layout` builds their paths from the names
here) and this package's ``zero_to_fp32`` (:mod:`ds_zero.consolidate`, :mod:`ds_zero.pipe_consolidate`)
reads them, so the names live in the lower of the two packages. A pipeline's per-layer files are named
by ``PipelineModule.ckpt_layer_path`` (ds-parallel), DeepSpeed's own method for them; only the pattern
that finds them is here.
"""

from __future__ import annotations

LATEST = "latest"  # <dir>/latest holds the newest tag
MANIFEST = "ds_manifest.json"  # this project's record of a complete save (ds_engine.checkpoint.manifest)

MODEL_STATES_GLOB = "*_model_states.pt"
OPTIM_STATES_GLOB = "*_optim_states.pt"
STAGE_MODEL_STATES_GLOB = "mp_rank_*_model_states.pt"  # a pipeline's per-stage files
LAYER_FILES_GLOB = "layer_*-model_states.pt"  # a pipeline's per-layer files
ZERO_OPTIM_STATES_GLOB = "zero_pp_rank_*_mp_rank_*_optim_states.pt"  # every rank's optimizer slices


def model_states(mp_rank: int = 0) -> str:
    """``mp_rank_00_model_states.pt``: the module, counters and schedule (stages 0-2; a pipeline's stage)."""
    return f"mp_rank_{mp_rank:02d}_model_states.pt"


def zero_model_states(dp_rank: int, mp_rank: int = 0) -> str:
    """``zero_pp_rank_<r>_mp_rank_00_model_states.pt``: stage 3's model states, one per rank."""
    return f"zero_pp_rank_{dp_rank}_mp_rank_{mp_rank:02d}_model_states.pt"


def zero_optim_states(dp_rank: int, mp_rank: int = 0) -> str:
    """``zero_pp_rank_<r>_mp_rank_00_optim_states.pt``: one data-parallel rank's optimizer slices."""
    return f"zero_pp_rank_{dp_rank}_mp_rank_{mp_rank:02d}_optim_states.pt"


def expert_model_states(layer_id: int, expert_id: int, mp_rank: int = 0) -> str:
    """``layer_<L>_expert_<E>_mp_rank_00_model_states.pt``: one MoE expert's weights."""
    return f"layer_{layer_id}_expert_{expert_id}_mp_rank_{mp_rank:02d}_model_states.pt"


def expert_optim_states(ep_rank: int, mp_rank: int = 0) -> str:
    """``expp_rank_<ep>_mp_rank_00_optim_states.pt``: an expert-parallel rank's optimizer state (stage 0)."""
    return f"expp_rank_{ep_rank}_mp_rank_{mp_rank:02d}_optim_states.pt"


__all__ = [
    "LATEST",
    "LAYER_FILES_GLOB",
    "MANIFEST",
    "MODEL_STATES_GLOB",
    "OPTIM_STATES_GLOB",
    "STAGE_MODEL_STATES_GLOB",
    "ZERO_OPTIM_STATES_GLOB",
    "expert_model_states",
    "expert_optim_states",
    "model_states",
    "zero_model_states",
    "zero_optim_states",
]
