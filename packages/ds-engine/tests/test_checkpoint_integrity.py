"""A checkpoint tag is complete or refused: the manifest, file checks on load, safe_load's messages,
file modes, stale temporaries and a full disk (single process; the multi-rank cases are in
tests/engine/test_engine_checkpoint_integrity.py)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from ds_engine import initialize
from ds_engine.checkpoint import (
    CorruptCheckpointError,
    IncompleteCheckpointError,
    UnsafeCheckpointError,
    safe_load,
)

CONFIG = {"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}}}


def _engine(seed: int = 0, width: int = 16):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.Tanh(), torch.nn.Linear(width, 3))
    engine, *_ = initialize(model=model, config=CONFIG, dist_init_required=False)
    return engine


def _train(engine, steps: int) -> None:
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        loss = engine(torch.randn(2, 6, generator=gen)).pow(2).mean()
        engine.backward(loss)
        engine.step()


def _saved(tmp_path: Path, tag: str = "t") -> tuple[object, Path]:
    engine = _engine()
    _train(engine, 2)
    engine.save_checkpoint(str(tmp_path), tag=tag)
    return engine, tmp_path / tag


def _weights(engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


def test_manifest_lists_what_the_save_wrote(tmp_path) -> None:
    _, folder = _saved(tmp_path)
    manifest = json.loads((folder / "ds_manifest.json").read_text())
    assert (
        manifest["format"],
        manifest["tag"],
        manifest["world_size"],
        manifest["dp_world_size"],
        manifest["zero_stage"],
        manifest["optimizer_states"],
    ) == ("ds-manifest-v1", "t", 1, 1, 0, True)
    assert set(manifest["files"]) == {"mp_rank_00_model_states.pt"}
    info = manifest["files"]["mp_rank_00_model_states.pt"]
    data = (folder / "mp_rank_00_model_states.pt").read_bytes()
    assert (info["size"], info["crc32"], info["kind"]) == (len(data), zlib.crc32(data), "model_states")


@pytest.mark.faults
def test_tag_without_manifest_is_refused(tmp_path) -> None:
    _, folder = _saved(tmp_path)
    (folder / "ds_manifest.json").unlink()  # what a save interrupted after its files leaves
    with pytest.raises(
        IncompleteCheckpointError, match=rf"{folder} is incomplete: .*ds_manifest.json, which is missing"
    ):
        _engine(seed=1).load_checkpoint(str(tmp_path), tag="t")


@pytest.mark.faults
def test_tag_with_files_but_no_model_states_is_refused(tmp_path) -> None:
    _, folder = _saved(tmp_path)
    (folder / "ds_manifest.json").unlink()
    (folder / "mp_rank_00_model_states.pt").rename(folder / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(IncompleteCheckpointError, match=rf"{folder} is incomplete: it holds zero_pp_rank_0"):
        _engine(seed=1).load_checkpoint(str(tmp_path), tag="t")


@pytest.mark.faults
def test_truncated_file_is_named(tmp_path) -> None:
    _, folder = _saved(tmp_path)
    path = folder / "mp_rank_00_model_states.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CorruptCheckpointError, match=rf"{path} has {len(data) // 2} bytes, not the {len(data)}"
    ):
        _engine(seed=1).load_checkpoint(str(tmp_path), tag="t")
    with pytest.raises(CorruptCheckpointError, match=rf"{path} is truncated or not a torch checkpoint: "):
        safe_load(str(path))


@pytest.mark.faults
def test_flipped_byte_is_refused(tmp_path) -> None:
    engine, folder = _saved(tmp_path)
    path = folder / "mp_rank_00_model_states.pt"
    data = bytearray(path.read_bytes())
    weight = engine.module.state_dict()["0.weight"].numpy().tobytes()
    at = bytes(data).find(weight)
    assert at > 0
    data[at + 5] ^= 0x40  # inside the tensor's bytes: torch itself reads the file without complaint
    path.write_bytes(bytes(data))
    assert not torch.equal(safe_load(str(path))["module"]["0.weight"], engine.module.state_dict()["0.weight"])
    with pytest.raises(CorruptCheckpointError, match=rf"{path} does not hold the bytes it was saved with"):
        _engine(seed=1).load_checkpoint(str(tmp_path), tag="t")


@pytest.mark.faults
def test_random_bytes_are_named_without_unsafe_advice(tmp_path) -> None:
    path = tmp_path / "noise.pt"
    noise = bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    )
    path.write_bytes(b"\x80" + noise)  # a pickle protocol byte first, then garbage
    with pytest.raises(CorruptCheckpointError) as caught:
        safe_load(str(path))
    assert str(caught.value).startswith(f"{path} is truncated or not a torch checkpoint: ")
    assert "False" not in str(caught.value) and "weights_only=False" not in str(caught.value)


@pytest.mark.faults
def test_malicious_pickle_is_unsafe_and_named(tmp_path) -> None:
    class Planted:
        def __reduce__(self):
            return (os.system, ("echo planted",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Planted()}, path)
    with pytest.raises(UnsafeCheckpointError) as caught:
        safe_load(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path} holds objects that cannot be loaded safely") and "system" in message
    assert "False" not in message


def _save_under_umask(umask: int, save_dir: Path) -> None:
    script = (
        "import os, sys, torch\n"
        f"os.umask({umask:#o})\n"
        "from ds_engine import initialize\n"
        "model = torch.nn.Linear(4, 2)\n"
        "engine, *_ = initialize(model=model, config={'train_micro_batch_size_per_gpu': 1, "
        "'optimizer': {'type': 'AdamW', 'params': {'lr': 0.01}}}, dist_init_required=False)\n"
        "engine.save_checkpoint(sys.argv[1], tag='m')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script, str(save_dir)], check=True, timeout=120, env=env)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_files_get_the_umask_mode(tmp_path, umask: int, mode: int) -> None:
    _save_under_umask(umask, tmp_path)
    for path in (
        tmp_path / "latest",
        tmp_path / "m" / "ds_manifest.json",
        tmp_path / "m" / "mp_rank_00_model_states.pt",
    ):
        assert oct(path.stat().st_mode & 0o777) == oct(mode), path


@pytest.mark.faults
def test_stale_temporaries_are_ignored_then_removed(tmp_path) -> None:
    engine, folder = _saved(tmp_path)
    stale = folder / ".mp_rank_00_model_states.pt.k2j4x9_a.tmp"  # a writer killed before its rename
    stale.write_bytes(b"half a file")
    stale_latest = tmp_path / ".latest.q1w2e3r4.tmp"
    stale_latest.write_text("t")
    fresh = _engine(seed=1)
    assert fresh.load_checkpoint(str(tmp_path))[0] == str(folder / "mp_rank_00_model_states.pt")
    assert all(torch.equal(a, b) for a, b in zip(_weights(engine).values(), _weights(fresh).values()))
    engine.save_checkpoint(str(tmp_path), tag="t")
    assert not stale.exists() and not stale_latest.exists()
    assert sorted(os.listdir(folder)) == ["ds_manifest.json", "mp_rank_00_model_states.pt"]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


@pytest.mark.faults
@pytest.mark.timeout(120)
def test_full_disk_keeps_the_previous_checkpoint(small_disk) -> None:
    engine = _engine(width=64)
    _train(engine, 1)
    engine.save_checkpoint(str(small_disk), tag="before")
    saved = _weights(engine)
    free = os.statvfs(small_disk)
    filler_size = free.f_bavail * free.f_frsize - 8192  # leave less than the next checkpoint needs
    with open(small_disk / "filler", "wb") as filler:
        filler.write(b"\0" * filler_size)
    _train(engine, 1)
    with pytest.raises(OSError) as caught:
        engine.save_checkpoint(str(small_disk), tag="after")
    assert caught.value.errno == errno.ENOSPC
    assert "ENOSPC" in str(caught.value) and "mp_rank_00_model_states.pt" in str(caught.value)
    assert (small_disk / "latest").read_text() == "before"
    leftovers = [p for p in small_disk.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    (small_disk / "filler").unlink()
    fresh = _engine(seed=1, width=64)
    path, _ = fresh.load_checkpoint(str(small_disk))
    assert path == str(small_disk / "before" / "mp_rank_00_model_states.pt")
    assert all(torch.equal(saved[k], v) for k, v in _weights(fresh).items())
