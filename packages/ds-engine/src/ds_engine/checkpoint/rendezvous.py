"""Checkpoint rendezvous: every rank must reach save/load, with the same tag, within a timeout.

DeepSpeed hangs when ``save_checkpoint`` is called on only some ranks. Here each save starts with a
``monitored_barrier`` on a dedicated gloo group (so it can never pair with a training collective of a
rank that skipped the save): a rank that does not arrive within ``checkpoint.rendezvous_timeout``
seconds turns into a :class:`CheckpointRendezvousError` on the ranks that did.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Any

import torch

import ds_comm

logger = logging.getLogger("ds_engine")


class CheckpointRendezvousError(RuntimeError):
    """Not every rank called save/load_checkpoint in time, or the ranks disagree on the tag."""


def make_checkpoint_group() -> Any:
    """A gloo group over all ranks for checkpoint agreement (None in a single-process world).

    Every rank must call this at the same point (the engine does it in its constructor).
    """
    if not ds_comm.is_initialized() or ds_comm.get_world_size() == 1:
        return None
    return ds_comm.new_group(backend="gloo")


def wait_for_all(what: str, *, group: Any, timeout_s: float) -> None:
    """Block until every rank of ``group`` reaches this point, or raise after ``timeout_s`` seconds."""
    if group is None:
        return
    try:
        ds_comm.monitored_barrier(group=group, timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointRendezvousError(
            f"{what}: not every rank reached it within {timeout_s:g} s ({detail}); every rank must call "
            f"{what} (set checkpoint.rendezvous_timeout to wait longer)"
        ) from None


def _tag_hash(tag: str) -> int:
    return int(hashlib.sha1(tag.encode("utf-8")).hexdigest()[:15], 16)  # < 2**60: fits int64


def check_same_tag(tag: str, *, group: Any, mode: str) -> None:
    """Compare ``tag`` across ranks; ``mode`` is IGNORE, WARN (log) or FAIL (raise)."""
    if group is None or mode == "IGNORE":
        return
    h = _tag_hash(tag)
    probe = torch.tensor([h, -h], dtype=torch.int64)
    ds_comm.all_reduce(probe, op=ds_comm.ReduceOp.MAX, group=group)
    if int(probe[0]) == h and -int(probe[1]) == h:
        return
    message = f"checkpoint tag {tag!r} differs across ranks; pass the same tag on every rank"
    if mode == "FAIL":
        raise CheckpointRendezvousError(message)
    logger.warning(message)
