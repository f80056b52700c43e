"""A checkpoint tag is complete or refused, with 2 ranks: a stage-2 save's manifest names every rank's
files; a load refuses a tag whose optimizer files are missing or damaged (naming them) unless the
weights only are asked for; a save of the tag again clears the temporaries a killed writer left and
creates its files with the process umask. DeepSpeed-written tags (no manifest) are checked for every
rank's optimizer file.

The saves run on 2 real ranks; the loads run in this process at world size 1 (a load needs no other
rank, and a stage-2 checkpoint reshards to any world size).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import engine_workers as w
import pytest
import torch

import deepspeed
from ds_comm.testing import run_distributed
from ds_engine.checkpoint import CorruptCheckpointError, IncompleteCheckpointError, safe_load

STAGE, STEPS = 2, 2
TAG = f"global_step{STEPS}"
OPTIM = [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)]
FIXTURES = Path(__file__).with_name("fixtures")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A 2-rank stage-2 checkpoint (every test works on its own copy)."""
    root = tmp_path_factory.mktemp("saved") / "ckpt"
    run_distributed(w.train_and_save, world_size=2, timeout=200, args=(STEPS, str(root), "adamw", STAGE))
    return root


@pytest.fixture
def ckpt(saved: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(saved, copy)
    return copy


def _load(checkpoint: Path, **kw) -> tuple[str | None, dict[str, torch.Tensor], deepspeed.DeepSpeedEngine]:
    engine, *_ = deepspeed.initialize(
        model=w.make_model(seed=99), config=w.config(1, "adamw", STAGE), dist_init_required=False
    )
    path, _ = engine.load_checkpoint(str(checkpoint), **kw)
    return path, {k: v.detach().clone() for k, v in engine.module.state_dict().items()}, engine


def _saved_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return safe_load(str(checkpoint / TAG / "mp_rank_00_model_states.pt"))["module"]


@pytest.mark.timeout(240)
def test_manifest_names_every_ranks_files(ckpt: Path) -> None:
    manifest = json.loads((ckpt / TAG / "ds_manifest.json").read_text())
    assert (
        manifest["world_size"],
        manifest["dp_world_size"],
        manifest["zero_stage"],
        manifest["optimizer_states"],
    ) == (2, 2, STAGE, True)
    files = manifest["files"]
    assert sorted(files) == sorted(["mp_rank_00_model_states.pt", *OPTIM])
    assert [files[name]["rank"] for name in OPTIM] == [0, 1]
    for name, info in files.items():
        assert info["size"] == (ckpt / TAG / name).stat().st_size, name
    path, weights, engine = _load(ckpt)
    assert path is not None and engine.global_steps == STEPS
    assert all(torch.equal(weights[k], v) for k, v in _saved_weights(ckpt).items())


@pytest.mark.faults
@pytest.mark.timeout(240)
def test_one_missing_optimizer_file_is_named(ckpt: Path) -> None:
    missing = ckpt / TAG / OPTIM[1]
    missing.unlink()
    with pytest.raises(IncompleteCheckpointError) as caught:
        _load(ckpt)
    message = str(caught.value)
    assert f"{missing} is missing" in message and OPTIM[0] not in message
    assert "load_optimizer_states=False" in message and "load_module_only=True" in message


@pytest.mark.faults
@pytest.mark.timeout(240)
def test_all_optimizer_files_missing_is_an_error_unless_the_weights_only_are_asked_for(ckpt: Path) -> None:
    for name in OPTIM:
        (ckpt / TAG / name).unlink()  # what an interrupted save or a full disk can leave
    with pytest.raises(IncompleteCheckpointError, match=rf"{OPTIM[0]} is missing; .*{OPTIM[1]} is missing"):
        _load(ckpt)
    expected = _saved_weights(ckpt)
    for choice in ({"load_optimizer_states": False}, {"load_module_only": True}):
        path, weights, _ = _load(ckpt, **choice)
        assert path == str(ckpt / TAG / "mp_rank_00_model_states.pt"), choice
        assert all(torch.equal(weights[k], v) for k, v in expected.items()), choice


@pytest.mark.faults
@pytest.mark.timeout(240)
def test_damaged_optimizer_files_are_named(ckpt: Path) -> None:
    truncated, flipped = ckpt / TAG / OPTIM[0], ckpt / TAG / OPTIM[1]
    truncated.write_bytes(truncated.read_bytes()[:1000])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit
    flipped.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError) as caught:
        _load(ckpt)
    message = str(caught.value)
    assert f"{truncated} has 1000 bytes" in message and f"{flipped} does not hold the bytes" in message
    _, weights, _ = _load(ckpt, load_optimizer_states=False)  # the weights do not need those files
    assert all(torch.equal(weights[k], v) for k, v in _saved_weights(ckpt).items())


@pytest.mark.faults
@pytest.mark.timeout(300)
def test_saving_again_removes_stale_temporaries_and_uses_the_umask(ckpt: Path) -> None:
    folder = ckpt / TAG
    stale = [
        folder / f".{OPTIM[1]}.x1y2z3w4.tmp",
        folder / ".mp_rank_00_model_states.pt.a9b8c7d6.tmp",
        folder / ".ds_manifest.json.q0w9e8r7.tmp",
        ckpt / ".latest.m1n2b3v4.tmp",
    ]
    for path in stale:  # what ranks killed between writing and renaming leave
        path.write_bytes(b"partial")
    assert _load(ckpt)[0] is not None  # never read
    previous = os.umask(0o027)  # the spawned ranks inherit it
    try:
        run_distributed(w.train_and_save, world_size=2, timeout=200, args=(STEPS, str(ckpt), "adamw", STAGE))
    finally:
        os.umask(previous)
    assert [p for p in stale if p.exists()] == []
    assert sorted(os.listdir(folder)) == sorted(["ds_manifest.json", "mp_rank_00_model_states.pt", *OPTIM])
    for path in [ckpt / "latest", *folder.iterdir()]:
        assert oct(path.stat().st_mode & 0o777) == oct(0o640), path


def _load_deepspeed_fixture(checkpoint: Path, **kw) -> str | None:
    """Load at stage 2 (a DeepSpeed stage-3 save loads there too; stage 3 here would need a process group)."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
        "zero_optimization": {"stage": STAGE},
    }
    engine, *_ = deepspeed.initialize(model=model, config=config, dist_init_required=False)
    return engine.load_checkpoint(str(checkpoint), **kw)[0]


@pytest.mark.faults
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("fixture", "removed", "weights_only"),
    [
        ("ds0.19.8-stage2", "zero_pp_rank_1_mp_rank_00_optim_states.pt", True),
        ("ds0.19.8-bf16-stage1", "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", True),
        (
            "ds0.19.8-stage3",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
            False,
        ),  # its weights live in those files
    ],
)
def test_deepspeed_checkpoint_missing_a_rank_file_is_named(
    tmp_path, fixture: str, removed: str, weights_only: bool
) -> None:
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / fixture, checkpoint)
    assert _load_deepspeed_fixture(checkpoint) is not None  # intact: it loads
    missing = checkpoint / "global_step3" / removed
    missing.unlink()
    with pytest.raises(
        IncompleteCheckpointError, match=rf"{missing} is missing \(1 of the 2 optimizer files"
    ):
        _load_deepspeed_fixture(checkpoint)
    if weights_only:
        assert _load_deepspeed_fixture(checkpoint, load_optimizer_states=False) is not None
    else:
        with pytest.raises(IncompleteCheckpointError, match=rf"{missing} is missing"):
            _load_deepspeed_fixture(checkpoint, load_module_only=True)
