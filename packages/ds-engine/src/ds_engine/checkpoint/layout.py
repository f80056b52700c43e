"""DeepSpeed's checkpoint layout (clients read these files directly).

``<dir>/latest`` holds the tag; ``<dir>/<tag>/mp_rank_00_model_states.pt`` holds the module, the
(unsharded) optimizer, the LR schedule and the counters; sharded stages add one
``zero_pp_rank_<r>_mp_rank_00_optim_states.pt`` per data-parallel rank. At stage 3 the model states
are ``zero_pp_rank_<r>_mp_rank_00_model_states.pt``, one per rank, as DeepSpeed names them; rank 0's
holds the gathered module.
"""

from __future__ import annotations

import os

LATEST = "latest"

# Keys of the model-states dict, beside which the client's own keys are stored.
MODULE = "module"
OPTIMIZER = "optimizer"
LR_SCHEDULER = "lr_scheduler"
GLOBAL_STEPS = "global_steps"
GLOBAL_SAMPLES = "global_samples"
SKIPPED_STEPS = "skipped_steps"
DP_WORLD_SIZE = "dp_world_size"
MP_WORLD_SIZE = "mp_world_size"
DS_CONFIG = "ds_config"
DS_VERSION = "ds_version"
BUFFER_NAMES = "buffer_names"
PARAM_SHAPES = "param_shapes"
FROZEN_PARAM_SHAPES = "frozen_param_shapes"
SHARED_PARAMS = "shared_params"
FROZEN_PARAM_FRAGMENTS = "frozen_param_fragments"
DATA_SAMPLER = "data_sampler"
RANDOM_LTD = "random_ltd"
OPTIMIZER_STATE_DICT = "optimizer_state_dict"

ENGINE_KEYS = frozenset({
    MODULE, OPTIMIZER, LR_SCHEDULER, GLOBAL_STEPS, GLOBAL_SAMPLES, SKIPPED_STEPS, DP_WORLD_SIZE, MP_WORLD_SIZE,
    DS_CONFIG, DS_VERSION, BUFFER_NAMES, PARAM_SHAPES, FROZEN_PARAM_SHAPES, SHARED_PARAMS,
    FROZEN_PARAM_FRAGMENTS, DATA_SAMPLER, RANDOM_LTD,
})


def default_tag(global_steps: int) -> str:
    """The tag DeepSpeed uses when none is given."""
    return f"global_step{global_steps}"


def model_states_path(save_dir: str | os.PathLike[str], tag: str, mp_rank: int = 0) -> str:
    """``<dir>/<tag>/mp_rank_00_model_states.pt``."""
    return os.path.join(os.fspath(save_dir), str(tag), f"mp_rank_{mp_rank:02d}_model_states.pt")


def zero3_model_states_path(save_dir: str | os.PathLike[str], tag: str, dp_rank: int, mp_rank: int = 0) -> str:
    """``<dir>/<tag>/zero_pp_rank_<r>_mp_rank_00_model_states.pt`` (stage 3)."""
    return os.path.join(os.fspath(save_dir), str(tag), f"zero_pp_rank_{dp_rank}_mp_rank_{mp_rank:02d}_model_states.pt")


def find_model_states(load_dir: str | os.PathLike[str], tag: str) -> str | None:
    """The file holding the module in a checkpoint written at any stage (None if there is none)."""
    for path in (model_states_path(load_dir, tag), zero3_model_states_path(load_dir, tag, 0)):
        if os.path.isfile(path):
            return path
    return None


def zero_optim_states_path(save_dir: str | os.PathLike[str], tag: str, dp_rank: int, mp_rank: int = 0) -> str:
    """``<dir>/<tag>/zero_pp_rank_<r>_mp_rank_00_optim_states.pt``."""
    return os.path.join(os.fspath(save_dir), str(tag), f"zero_pp_rank_{dp_rank}_mp_rank_{mp_rank:02d}_optim_states.pt")


def latest_path(save_dir: str | os.PathLike[str]) -> str:
    """``<dir>/latest``."""
    return os.path.join(os.fspath(save_dir), LATEST)
