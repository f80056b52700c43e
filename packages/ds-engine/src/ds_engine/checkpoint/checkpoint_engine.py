"""DeepSpeed's pluggable checkpoint-engine interface (``deepspeed.runtime.checkpoint_engine``).

Clients subclass :class:`CheckpointEngine` or call :class:`TorchCheckpointEngine` directly to write
and read state files. Here the torch engine goes through the project's one file writer
(:mod:`ds_engine.checkpoint.files`): every save is atomic (a temporary file renamed over the final
name, Note [atomic writes] there), only tensors and plain data are saved, and loading uses
``torch.load(weights_only=True)``, so a file cannot run code when it is read (DESIGN.md section 5).
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from typing import Any

from ds_engine.checkpoint.files import atomic_torch_save, check_safe, safe_load


@dataclass
class CheckpointCommitInfo:
    """What a save is about to produce: ``tag`` inside ``save_dir``, and whether ``latest`` follows."""

    tag: str
    save_dir: str
    save_latest: bool


class CheckpointEngine(abc.ABC):
    """A checkpoint backend: ``create`` a tag, ``save``/``load`` files, ``commit`` when all are written."""

    def __init__(self, config_params: Any = None) -> None:
        self.name: str | None = None

    @abc.abstractmethod
    def create(self, info: CheckpointCommitInfo) -> None:
        """A save of ``info.tag`` begins."""

    @abc.abstractmethod
    def save(self, state_dict: Any, path: str) -> None:
        """Write ``state_dict`` to ``path``."""

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """Create the directory ``path`` (and its parents)."""
        os.makedirs(path, exist_ok=exist_ok)

    @abc.abstractmethod
    def load(self, path: str, map_location: Any = None) -> Any:
        """Read the state saved at ``path``."""

    @abc.abstractmethod
    def commit(self, info: CheckpointCommitInfo) -> bool:
        """Every file of ``info.tag`` is written; return whether the tag is complete."""

    def is_data_parallel_writer(self, dp_rank: int) -> bool:
        """Whether data-parallel rank ``dp_rank`` writes the replicated files."""
        return dp_rank == 0

    def is_decoupled(self) -> bool:
        """Whether saves complete in the background."""
        return False

    def set_commit_info(self, info: CheckpointCommitInfo) -> None:
        """Remember the tag a background save will commit (nothing to remember for synchronous engines)."""
        return None

    def get_commit_info(self) -> CheckpointCommitInfo | None:
        """The tag a background save will commit (None for synchronous engines)."""
        return None

    def cleanup(self) -> None:
        """Release the engine's resources."""
        return None

    def preserves_storage_sharing(self) -> bool:
        """Whether tensors sharing storage still share it after a round trip."""
        return True


class TorchCheckpointEngine(CheckpointEngine):
    """``torch.save``/``torch.load`` with atomic writes and safe reads (see the module doc)."""

    def __init__(self, config_params: Any = None) -> None:
        super().__init__(config_params)
        self.name = "TorchCheckpointEngine"

    def create(self, info: CheckpointCommitInfo) -> None:
        """Nothing to prepare: each file is complete the moment :meth:`save` returns."""

    def save(self, state_dict: Any, path: str) -> None:
        """Write ``state_dict`` atomically; refuse values a safe load could not read back
        (:class:`~ds_engine.checkpoint.files.UnsafeCheckpointValue`)."""
        check_safe(state_dict, "state_dict")
        atomic_torch_save(state_dict, path)

    def load(self, path: str, map_location: Any = None) -> Any:
        """Read ``path`` with ``weights_only=True``: a file holding code or arbitrary objects is refused
        (:class:`~ds_engine.checkpoint.files.UnsafeCheckpointError`)."""
        return safe_load(path, map_location="cpu" if map_location is None else map_location)

    def commit(self, info: CheckpointCommitInfo) -> bool:
        """Synchronous saves are complete once written."""
        return True
