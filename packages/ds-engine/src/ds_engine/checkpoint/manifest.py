"""A tag's manifest: what a finished save wrote (layout in :mod:`.layout`), and the check against it.

Note: [complete or refused] Every rank reports the files it wrote (name, size, CRC-32 computed from
the bytes in memory, :class:`.files.WrittenFile`); after the rendezvous that proves every file is on
disk, the reports are gathered over the checkpoint group and rank 0 writes ``ds_manifest.json``
atomically, before ``latest``. A load checks each file it will read against it: present, the recorded
size, the recorded CRC-32. CRC-32 rather than a cryptographic hash: it guards against truncation and
bit rot, not an attacker (who could rewrite the manifest beside the file), and zlib computes it at
several GB/s, so the save hashes while serialising and the load can afford to check every file it reads.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import ds_comm
from ds_engine.checkpoint import layout
from ds_engine.checkpoint.files import CorruptCheckpointError, WrittenFile, atomic_write_text, crc32_of_file

FORMAT = "ds-manifest-v1"
MODEL_STATES = "model_states"
OPTIM_STATES = "optim_states"


class IncompleteCheckpointError(RuntimeError):
    """A checkpoint tag is missing files (an interrupted save, a full disk, a deleted file)."""


def entry(written: WrittenFile, *, kind: str, node_local: bool) -> dict[str, Any]:
    """One rank's report of a file it wrote. ``node_local``: tag it with this host, whose disk holds it."""
    return {
        "name": os.path.basename(written.path),
        "size": written.size,
        "crc32": written.crc32,
        "rank": ds_comm.get_rank() if ds_comm.is_initialized() else 0,
        "kind": kind,
        "host": socket.gethostname() if node_local else "",
    }


def gather(entries: list[dict[str, Any]], *, group: Any) -> list[dict[str, Any]]:
    """Every rank's reports, on every rank (collective over ``group``; None: a single process)."""
    if group is None:
        return list(entries)
    everyone: list[Any] = [None] * ds_comm.get_world_size(group)
    ds_comm.all_gather_object(everyone, entries, group=group)
    return [item for rank_entries in everyone for item in rank_entries]


def build(
    tag: str,
    entries: Iterable[dict[str, Any]],
    *,
    ds_version: str,
    world_size: int,
    dp_world_size: int,
    zero_stage: int,
    optimizer_states: bool,
) -> dict[str, Any]:
    """The manifest of ``tag`` listing ``entries`` (those on this host's disk when saved node-locally)."""
    here = socket.gethostname()
    files = {
        e["name"]: {"size": e["size"], "crc32": e["crc32"], "rank": e["rank"], "kind": e["kind"]}
        for e in sorted(entries, key=lambda e: e["name"])
        if e["host"] in ("", here)
    }
    return {
        "format": FORMAT,
        "tag": tag,
        "ds_version": ds_version,
        "world_size": world_size,
        "dp_world_size": dp_world_size,
        "zero_stage": zero_stage,
        "optimizer_states": optimizer_states,
        "checksum": "crc32",
        "files": files,
    }


def write(save_dir: str, tag: str, manifest: dict[str, Any]) -> WrittenFile:
    """Write ``<dir>/<tag>/ds_manifest.json`` atomically."""
    return atomic_write_text(layout.manifest_path(save_dir, tag), json.dumps(manifest, indent=1) + "\n")


def read(load_dir: str, tag: str) -> dict[str, Any] | None:
    """The tag's manifest, or None when it has none."""
    path = layout.manifest_path(load_dir, tag)
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptCheckpointError(
            f"{path} is damaged ({exc}); the save of this tag did not finish cleanly: load an earlier tag"
        ) from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("files"), dict)
    ):
        raise CorruptCheckpointError(f"{path} is not a {FORMAT} manifest")
    return manifest


def names_of(manifest: dict[str, Any], kind: str) -> list[str]:
    """The files of ``kind`` (model or optimizer states) the manifest lists, in rank order."""
    files = manifest["files"]
    return sorted(
        (name for name, info in files.items() if info.get("kind") == kind),
        key=lambda name: (files[name].get("rank", 0), name),
    )


def _problem(path: str, info: dict[str, Any]) -> str | None:
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return f"{path} is missing"
    if size != info["size"]:
        return f"{path} has {size} bytes, not the {info['size']} it was saved with (truncated or overwritten)"
    if crc32_of_file(path) != info["crc32"]:
        return f"{path} does not hold the bytes it was saved with (its CRC-32 differs)"
    return None


def verify(load_dir: str, tag: str, manifest: dict[str, Any], names: Sequence[str], *, advice: str) -> None:
    """Check that each of ``names`` is on disk as the manifest records it (size, then CRC-32);
    raise naming every file that is not, followed by ``advice`` (Note [complete or refused])."""
    folder = layout.tag_dir(load_dir, tag)
    problems, missing_only = [], True
    for name in names:
        info = manifest["files"].get(name)
        if info is None:
            problems.append(f"{os.path.join(folder, name)} is not listed in {layout.MANIFEST}")
            continue
        problem = _problem(os.path.join(folder, name), info)
        if problem is not None:
            problems.append(problem)
            missing_only = missing_only and problem.endswith("is missing")
    if not problems:
        return
    error = IncompleteCheckpointError if missing_only else CorruptCheckpointError
    raise error(f"checkpoint {folder} cannot be loaded: " + "; ".join(problems) + f". {advice}")
