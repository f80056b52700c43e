"""fp32 consolidation of a pipeline checkpoint (one ``layer_NN-model_states.pt`` file per layer).

Each layer file holds that layer's state dict; the stage files (``mp_rank_SS_model_states.pt``) map layer
indices to the names a ``PipelineModule`` gives them (``"3."``, or ``"tied_modules.<key>."`` for a tied
layer), so the result loads into a ``PipelineModule`` of any stage count. The values are the saved
weights (the training weights: fp32 runs give exact fp32, bf16/fp16 runs their 16-bit values upcast).
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

import torch

from ds_zero import checkpoint_names

_LAYER = re.compile(r"layer_(\d+)-(?:.*-)?model_states\.pt$")


def is_pipeline_checkpoint(tag_dir: str | os.PathLike) -> bool:
    """Whether ``tag_dir`` holds per-layer files (DeepSpeed's pipeline layout)."""
    return bool(glob.glob(os.path.join(tag_dir, checkpoint_names.LAYER_FILES_GLOB)))


def _prefixes(tag_dir: Path) -> dict[int, str]:
    out: dict[int, str] = {}
    for path in sorted(glob.glob(str(tag_dir / checkpoint_names.STAGE_MODEL_STATES_GLOB))):
        names = torch.load(path, map_location="cpu", weights_only=True).get("pipe_layer_prefixes") or {}
        out.update({int(k): v for k, v in names.items()})
    return out


def pipeline_fp32_state_dict(tag_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The whole pipeline's state dict, floating-point tensors in fp32, under PipelineModule's names."""
    tag_dir = Path(tag_dir)
    prefixes = _prefixes(tag_dir)
    out: dict[str, torch.Tensor] = {}
    for path in sorted(glob.glob(str(tag_dir / checkpoint_names.LAYER_FILES_GLOB))):
        match = _LAYER.search(os.path.basename(path))
        if match is None:
            continue
        idx = int(match.group(1))
        prefix = prefixes.get(idx, f"{idx}.")
        for name, value in torch.load(path, map_location="cpu", weights_only=True).items():
            out[prefix + name] = value.float().clone() if torch.is_floating_point(value) else value.clone()
    return out
