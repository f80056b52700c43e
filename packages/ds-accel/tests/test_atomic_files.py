"""Atomic writes: the new content or the old, never a part, and no temporary left behind."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from ds_accel.atomic_files import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    atomic_write_to_path,
    process_umask,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_text_and_json_land_whole_with_open_s_mode(tmp_path):
    target = tmp_path / "sub" / "latest"  # a missing folder is made
    atomic_write_text(target, "global_step1")
    assert target.read_text() == "global_step1"
    assert _mode(target) == 0o666 & ~process_umask()
    atomic_write_json(tmp_path / "r.json", {"b": 1, "a": 2}, sort_keys=True)
    assert (tmp_path / "r.json").read_text() == '{"a": 2, "b": 1}\n'
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 2, "b": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "sub"]


def test_explicit_mode(tmp_path):
    atomic_write_text(tmp_path / "hosts", "node1\n", mode=0o600)
    assert _mode(tmp_path / "hosts") == 0o600


@pytest.mark.faults
def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")

    def failing(handle):
        handle.write(b"half of the new")
        raise RuntimeError("writer died")

    def failing_path_writer(path: str) -> None:
        with open(path, "wb") as fh:
            fh.write(b"half of the new")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        atomic_write(target, failing)
    with pytest.raises(RuntimeError, match="writer died"):
        atomic_write_to_path(target, failing_path_writer)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_path_writers_write_through_a_temporary_name(tmp_path):
    seen = []

    def write(path: str) -> None:
        seen.append(path)
        with open(path, "wb") as fh:
            fh.write(b"tensors")

    atomic_write_to_path(tmp_path / "model.safetensors", write)
    assert (tmp_path / "model.safetensors").read_bytes() == b"tensors"
    assert os.path.basename(seen[0]).startswith(".model.safetensors.") and seen[0].endswith(".tmp")
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_importing_does_not_import_torch():
    code = "import sys, ds_accel.atomic_files; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
