"""``TorchCheckpointEngine``: round trip, atomic writes, refusal of unsafe values and pickles."""

from __future__ import annotations

import os

import pytest
import torch

from ds_engine.checkpoint.checkpoint_engine import (
    CheckpointCommitInfo,
    CheckpointEngine,
    TorchCheckpointEngine,
)
from ds_engine.checkpoint.files import UnsafeCheckpointError, UnsafeCheckpointValue


def test_round_trip(tmp_path):
    engine = TorchCheckpointEngine()
    info = CheckpointCommitInfo(tag="t1", save_dir=str(tmp_path), save_latest=True)
    engine.create(info)
    engine.makedirs(str(tmp_path / "t1"), exist_ok=True)
    state = {"w": torch.arange(4.0), "step": 3, "nested": {"names": ["a", "b"]}}
    path = str(tmp_path / "t1" / "mp_rank_00_model_states.pt")
    engine.save(state, path)
    loaded = engine.load(path)
    assert (
        torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3 and loaded["nested"] == state["nested"]
    )
    assert engine.commit(info) is True
    assert os.listdir(tmp_path / "t1") == ["mp_rank_00_model_states.pt"]  # no temporary left behind
    assert engine.load(path, map_location="meta")["w"].device.type == "meta"
    assert engine.is_data_parallel_writer(0) and not engine.is_data_parallel_writer(1)


class _Opaque:
    def __init__(self) -> None:
        self.x = 1


@pytest.mark.faults
def test_a_refused_save_leaves_the_previous_file(tmp_path):
    engine = TorchCheckpointEngine()
    path = str(tmp_path / "state.pt")
    engine.save({"v": torch.ones(2)}, path)
    with pytest.raises(UnsafeCheckpointValue, match="_Opaque"):
        engine.save({"v": torch.zeros(2), "obj": _Opaque()}, path)
    assert torch.equal(engine.load(path)["v"], torch.ones(2))
    assert os.listdir(tmp_path) == ["state.pt"]


@pytest.mark.faults
def test_load_refuses_a_pickle_that_would_run_code(tmp_path):
    path = str(tmp_path / "malicious.pt")
    torch.save({"payload": _Opaque()}, path)  # written by something other than this engine
    with pytest.raises(UnsafeCheckpointError):
        TorchCheckpointEngine().load(path)


def test_engine_interface_is_abstract():
    with pytest.raises(TypeError):
        CheckpointEngine()  # type: ignore[abstract]
