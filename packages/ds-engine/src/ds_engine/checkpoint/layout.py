"""DeepSpeed's checkpoint layout (clients read these files directly).

``<dir>/latest`` holds the tag; ``<dir>/<tag>/mp_rank_00_model_states.pt`` holds the module, the
(unsharded) optimizer, the LR schedule and the counters; sharded stages add one
``zero_pp_rank_<r>_mp_rank_00_optim_states.pt`` per data-parallel rank. At stage 3 the model states
are ``zero_pp_rank_<r>_mp_rank_00_model_states.pt``, one per rank, as DeepSpeed names them; rank 0's
holds the gathered module.

This project adds one file, ``<dir>/<tag>/ds_manifest.json`` (:data:`MANIFEST`), written by rank 0
after every rank's files are on disk and before ``latest`` (:mod:`.manifest`)::

    {"format": "ds-manifest-v1", "tag": ..., "ds_version": ..., "world_size": N, "dp_world_size": N,
     "zero_stage": S, "optimizer_states": true, "checksum": "crc32",
     "files": {"<name in the tag folder>": {"size": bytes, "crc32": int, "rank": r,
                                            "kind": "model_states" | "optim_states"}, ...}}

Its model-states files carry the key ``ds_manifest`` (:data:`MANIFEST_KEY`, the manifest's file
name), so a tag whose model states name a manifest that is not there is known to be an unfinished
save, while a checkpoint the reference DeepSpeed wrote (no such key) is still read. Writes go through
temporaries named ``.<name>.<random>.tmp`` in the same folder, which no reader matches.
"""

from __future__ import annotations

import os

from ds_zero import checkpoint_names
from ds_zero.checkpoint_names import LATEST, MANIFEST

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
MANIFEST_KEY = "ds_manifest"  # in this project's model states: the manifest the save ends with

ENGINE_KEYS = frozenset(
    {
        MODULE,
        OPTIMIZER,
        LR_SCHEDULER,
        GLOBAL_STEPS,
        GLOBAL_SAMPLES,
        SKIPPED_STEPS,
        DP_WORLD_SIZE,
        MP_WORLD_SIZE,
        DS_CONFIG,
        DS_VERSION,
        BUFFER_NAMES,
        PARAM_SHAPES,
        FROZEN_PARAM_SHAPES,
        SHARED_PARAMS,
        FROZEN_PARAM_FRAGMENTS,
        DATA_SAMPLER,
        RANDOM_LTD,
        MANIFEST_KEY,
    }
)

# DeepSpeed's other key and file-name constants (``deepspeed.checkpoint.constants``): the optimizer
# state dict of its ZeRO files, its file-name parts, and the universal-checkpoint keys clients read.
FP32_GROUPS = "fp32_groups"
FP32_FLAT_GROUPS = "fp32_flat_groups"
BASE_OPTIMIZER_STATE = "base_optimizer_state"
BASE_OPTIMIZER_STATE_STEP = "base_optimizer_state_step"
SINGLE_PARTITION_OF_FP32_GROUPS = "single_partition_of_fp32_groups"
PARAM_GROUPS = "param_groups"
GROUP_PADDINGS = "group_paddings"
PARTITION_COUNT = "partition_count"
ZERO_STAGE = "zero_stage"
CLIP_GRAD = "clip_grad"
FP32_WEIGHT_KEY = "fp32"
LOSS_SCALER = "loss_scaler"
PARAM = "param"
MODEL_FILE_PREFIX = "mp_rank_"
ZERO_FILE_PREFIX = "zero_pp_rank_"
OPTIM_FILE_SUFFIX = "_optim_states.pt"
MODEL_FILE_SUFFIX = "_model_states.pt"
LAYER_FILE_PREFIX = "layer_"
BF16_ZERO_FILE_PREFIX = "bf16_" + ZERO_FILE_PREFIX
FP16_ZERO_FILE_PREFIX = "fp16_" + ZERO_FILE_PREFIX
CHECKPOINT_PARALLEL_DIMS = "checkpoint_parallel_dimensions"
CHECKPOINT_PP_DEGREE = "pp_degree"
CHECKPOINT_TP_DEGREE = "tp_degree"
UNIVERSAL_CHECKPOINT_INFO = "universal_checkpoint_info"
UNIVERSAL_CHECKPOINT_VERSION_KEY = "universal_checkpoint_version"
UNIVERSAL_CHECKPOINT_VERSION_VALUE = 0.4
DS_AUTOTP_UC_META = "ds_autotp_universal_checkpoint_meta"
AUTOTP_UNSUPPORTED_PARAMETER_PATTERNS = "autotp_unsupported_parameter_patterns"
VOCAB_TENSOR = "vocab_tensor"
PADDED_VOCAB_SIZE = "padded_vocab_size"
ORIGINAL_VOCAB_SIZE = "original_vocab_size"
PARAM_SLICE_MAPPINGS = "param_slice_mappings"
CAT_DIM = "cat_dim"
PARAM_N_SUB_PARAMS = "param_n_sub_params"
SUB_PARAM_SHAPE = "sub_param_shape"
VOCABULARY_PARAMETER_PATTERNS = "vocabulary_parameter_patterns"
PIPELINE_REPLICATED_PARAMETER_PATTERNS = "pipeline_replicated_parameter_patterns"
PARAMETER_TO_AVERAGE_PATTERNS = "parameter_to_average_patterns"
PARAMETER_WITH_ROW_PARALLELISM_PATTERNS = "parameter_with_row_parallelism_patterns"
TP_REPLICATED_PARAMETER_PATTERNS = "tp_replicated_parameter_patterns"
PARAMETER_WITH_2_SUB_PARAMS_CAT_DIM_0 = "parameter_with_2_sub_params_cat_dim_0"
PARAMETER_WITH_SUB_PARAMS = "parameter_with_sub_params"
SUB_PARAM_SHARD_WIDTHS = "sub_param_shard_widths"
SUB_PARAMS_SHAPE = "sub_params_shape"


def default_tag(global_steps: int) -> str:
    """The tag DeepSpeed uses when none is given."""
    return f"global_step{global_steps}"


def tag_dir(save_dir: str | os.PathLike[str], tag: str) -> str:
    """``<dir>/<tag>``."""
    return os.path.join(os.fspath(save_dir), str(tag))


def manifest_path(save_dir: str | os.PathLike[str], tag: str) -> str:
    """``<dir>/<tag>/ds_manifest.json``."""
    return os.path.join(tag_dir(save_dir, tag), MANIFEST)


def model_states_path(save_dir: str | os.PathLike[str], tag: str, mp_rank: int = 0) -> str:
    """``<dir>/<tag>/mp_rank_00_model_states.pt``."""
    return os.path.join(os.fspath(save_dir), str(tag), checkpoint_names.model_states(mp_rank))


def zero3_model_states_path(
    save_dir: str | os.PathLike[str], tag: str, dp_rank: int, mp_rank: int = 0
) -> str:
    """``<dir>/<tag>/zero_pp_rank_<r>_mp_rank_00_model_states.pt`` (stage 3)."""
    return os.path.join(os.fspath(save_dir), str(tag), checkpoint_names.zero_model_states(dp_rank, mp_rank))


def find_model_states(load_dir: str | os.PathLike[str], tag: str) -> str | None:
    """The file holding the module in a checkpoint written at any stage (None if there is none)."""
    for path in (model_states_path(load_dir, tag), zero3_model_states_path(load_dir, tag, 0)):
        if os.path.isfile(path):
            return path
    return None


def zero_optim_states_path(save_dir: str | os.PathLike[str], tag: str, dp_rank: int, mp_rank: int = 0) -> str:
    """``<dir>/<tag>/zero_pp_rank_<r>_mp_rank_00_optim_states.pt``."""
    return os.path.join(os.fspath(save_dir), str(tag), checkpoint_names.zero_optim_states(dp_rank, mp_rank))


def latest_path(save_dir: str | os.PathLike[str]) -> str:
    """``<dir>/latest``."""
    return os.path.join(os.fspath(save_dir), LATEST)
