"""``zero_to_fp32``: one consolidated fp32 state dict from a checkpoint, without the training world.

Reads ``<dir>/<tag>/mp_rank_00_model_states.pt`` (the module's state: buffers, frozen parameters)
and every ``*_optim_states.pt`` (each rank's fp32 master slices, :mod:`ds_zero.sharded_state`), at
any world size and stage, and writes ``pytorch_model.bin`` or ``model.safetensors`` — sharded with
an index file past ``--max_shard_size`` — as DeepSpeed's script of the same name does.
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import pickle
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ds_accel.atomic_files import atomic_write, atomic_write_text, atomic_write_to_path
from ds_zero import checkpoint_names, deepspeed_format
from ds_zero.sharded_state import consolidate_fp32

MODEL_STATES = checkpoint_names.model_states()
ZERO3_MODEL_STATES = checkpoint_names.zero_model_states(0)


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def get_checkpoint_files(checkpoint_dir: str | os.PathLike, glob_pattern: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(checkpoint_dir, glob_pattern)), key=_natural)
    if not files:
        raise FileNotFoundError(f"can't find {glob_pattern} files in directory '{checkpoint_dir}'")
    return files


def get_optim_files(checkpoint_dir: str | os.PathLike) -> list[str]:
    return get_checkpoint_files(checkpoint_dir, checkpoint_names.OPTIM_STATES_GLOB)


def get_model_state_files(checkpoint_dir: str | os.PathLike) -> list[str]:
    return get_checkpoint_files(checkpoint_dir, checkpoint_names.MODEL_STATES_GLOB)


def get_model_state_file(checkpoint_dir: str | os.PathLike, zero_stage: int) -> str:
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"Directory '{checkpoint_dir}' doesn't exist")
    name = ZERO3_MODEL_STATES if zero_stage == 3 else MODEL_STATES
    path = os.path.join(checkpoint_dir, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"can't find model states file at '{path}'")
    return path


def resolve_tag_dir(checkpoint_dir: str | os.PathLike, tag: str | None) -> Path:
    """``<dir>/<tag>``, reading the tag from ``<dir>/latest`` when not given."""
    root = Path(checkpoint_dir)
    if tag is None:
        latest = root / "latest"
        if not latest.is_file():
            raise FileNotFoundError(f"no tag given and no 'latest' file in '{root}'")
        tag = latest.read_text().strip()
    tag_dir = root / tag
    if not tag_dir.is_dir():
        raise FileNotFoundError(f"Directory '{tag_dir}' doesn't exist")
    return tag_dir


def _load(path: str | os.PathLike) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _announced(paths: list[str], progress: Callable[[str], None] | None, verb: str) -> Iterator[str]:
    """``paths``, telling ``progress`` before each one (a big checkpoint reads for minutes)."""
    for k, path in enumerate(paths, 1):
        if progress is not None:
            progress(
                f"zero_to_fp32: [{k}/{len(paths)}] {verb} {os.path.basename(path)} "
                f"({os.path.getsize(path) / 2**20:.1f} MiB)"
            )
        yield path


def _print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def get_fp32_state_dict_from_zero_checkpoint(
    checkpoint_dir: str | os.PathLike,
    tag: str | None = None,
    exclude_frozen_parameters: bool = False,
    lazy_mode: bool = False,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The model's full state dict with every floating-point parameter in fp32 (buffers keep their dtype).

    ``lazy_mode`` is accepted for DeepSpeed compatibility; tensors are always materialised. ``progress``,
    if given, is told about each file before it is read.
    """
    tag_dir = resolve_tag_dir(checkpoint_dir, tag)
    from ds_zero.pipe_consolidate import is_pipeline_checkpoint, pipeline_fp32_state_dict

    if is_pipeline_checkpoint(tag_dir):  # one file per layer (a PipelineModule's checkpoint)
        return pipeline_fp32_state_dict(tag_dir)
    # an MoE checkpoint's per-expert files (layer_<L>_expert_<E>_...) hold no module: skip them
    model_files = sorted(
        (
            p
            for p in glob.glob(str(tag_dir / "*model_states.pt"))
            if not os.path.basename(p).startswith("layer_")
        ),
        key=_natural,
    )
    if not model_files:
        raise FileNotFoundError(f"can't find *model_states.pt files in directory '{tag_dir}'")
    model_state = _load(model_files[0])
    module: Mapping[str, torch.Tensor] = model_state.get("module") or {}
    buffers = set(model_state.get("buffer_names") or ())
    frozen = set(model_state.get("frozen_param_names") or ())
    paths = sorted(glob.glob(str(tag_dir / checkpoint_names.OPTIM_STATES_GLOB)), key=_natural)
    shards = deepspeed_format.read_optimizer_shards(
        _announced(paths, progress, "reading"), model_state.get("param_shapes")
    )
    trained = consolidate_fp32(shards) if shards else {}
    out: dict[str, torch.Tensor] = {}
    for name, value in module.items():
        if exclude_frozen_parameters and name in frozen:
            continue
        if name in trained:
            out[name] = trained[name]
        elif torch.is_floating_point(value) and name not in buffers:
            out[name] = value.float().clone()
        else:
            out[name] = value.clone()
    for name, value in trained.items():  # parameters the module dict did not list (stage 3)
        out.setdefault(str(name), value)
    return out


def _parse_size(size: str | int) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)\s*", size.upper())
    if not match:
        raise ValueError(f"max_shard_size={size!r}: expected digits and a unit, like '5GB' or '500MB'")
    number, unit = float(match.group(1)), match.group(2)
    powers = {
        "B": 1,
        "KB": 10**3,
        "MB": 10**6,
        "GB": 10**9,
        "TB": 10**12,
        "KIB": 2**10,
        "MIB": 2**20,
        "GIB": 2**30,
        "TIB": 2**40,
    }
    return int(number * powers[unit])


def convert_zero_checkpoint_to_fp32_state_dict(
    checkpoint_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    max_shard_size: str | int = "5GB",
    safe_serialization: bool = False,
    tag: str | None = None,
    exclude_frozen_parameters: bool = False,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the consolidated fp32 weights into ``output_dir``; return the files written. ``progress``, if
    given, is told about each file read and written."""
    state = get_fp32_state_dict_from_zero_checkpoint(
        checkpoint_dir, tag, exclude_frozen_parameters, progress=progress
    )
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    limit = _parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = tensor.contiguous()
        size += nbytes
    stem, ext = ("model", "safetensors") if safe_serialization else ("pytorch_model", "bin")
    if safe_serialization:
        try:
            from safetensors.torch import save_file
        except ImportError as exc:
            raise RuntimeError(
                "safe_serialization needs the safetensors package (pip install safetensors)"
            ) from exc
    names = (
        [f"{stem}.{ext}"]
        if len(shards) == 1
        else [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.{ext}" for i in range(len(shards))]
    )
    written = []
    for k, (name, shard) in enumerate(zip(names, shards), 1):
        target = out_dir / name
        if progress is not None:
            size_mib = sum(t.numel() * t.element_size() for t in shard.values()) / 2**20
            progress(f"zero_to_fp32: [{k}/{len(names)}] writing {name} ({size_mib:.1f} MiB)")
        if safe_serialization:
            atomic_write_to_path(target, functools.partial(save_file, shard, metadata={"format": "pt"}))
        else:
            atomic_write(target, functools.partial(torch.save, shard))
        written.append(target)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": {key: name for name, shard in zip(names, shards) for key in shard},
        }
        target = out_dir / f"{stem}.{ext}.index.json"
        atomic_write_text(target, json.dumps(index, indent=2))
        written.append(target)
    return written


def load_state_dict_from_zero_checkpoint(
    model: torch.nn.Module, checkpoint_dir: str | os.PathLike, tag: str | None = None
) -> torch.nn.Module:
    """Move ``model`` to the CPU and load the consolidated fp32 weights into it."""
    state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag)
    model = model.cpu()
    model.load_state_dict(state, strict=False)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zero_to_fp32", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint_dir", help="the folder holding 'latest' and the tag folders")
    parser.add_argument("output_dir", help="where to write the consolidated weights")
    parser.add_argument(
        "--max_shard_size", default="5GB", help="largest output file before sharding (e.g. 5GB)"
    )
    parser.add_argument(
        "--safe_serialization", action="store_true", help="write safetensors instead of pickle"
    )
    parser.add_argument(
        "-t", "--tag", default=None, help="checkpoint tag, e.g. global_step14 (default: 'latest')"
    )
    parser.add_argument(
        "--exclude_frozen_parameters", action="store_true", help="leave out frozen parameters"
    )
    parser.add_argument("-d", "--debug", action="store_true", help="accepted for compatibility")
    args = parser.parse_args(argv)
    try:
        files = convert_zero_checkpoint_to_fp32_state_dict(
            args.checkpoint_dir,
            args.output_dir,
            max_shard_size=args.max_shard_size,
            safe_serialization=args.safe_serialization,
            tag=args.tag,
            exclude_frozen_parameters=args.exclude_frozen_parameters,
            progress=_print_progress,
        )
    except pickle.UnpicklingError as exc:
        # weights_only loading refuses arbitrary pickles (DeepSpeed's own three classes are read as records)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"zero_to_fp32: error: {args.checkpoint_dir} holds objects that cannot be loaded safely ({first})",
            file=sys.stderr,
        )
        return 2
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as exc:
        print(f"zero_to_fp32: error: {exc}", file=sys.stderr)
        return 2
    for path in files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
