"""The reference DeepSpeed (0.19.8) in a venv of its own, for side-by-side benchmarks.

Its package name collides with ours, so it never shares a venv with this project. The venv is built
on first use under `.bench/refds` (torch pinned by constraints.txt, DeepSpeed's pure-Python install
with no op builds), or taken from `DS_REFERENCE_PYTHON` when that names an interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_VERSION = "0.19.8"
VENV = ROOT / ".bench" / "refds"


def _has_reference(python: Path) -> bool:
    probe = "import importlib.metadata as m; print(m.version('deepspeed'))"
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == REFERENCE_VERSION


def reference_python() -> Path:
    """An interpreter with the reference DeepSpeed installed, building its venv if needed."""
    override = os.environ.get("DS_REFERENCE_PYTHON")
    if override:
        return Path(override)
    python = VENV / "bin" / "python"
    if python.exists() and _has_reference(python):
        return python
    print(f"[bench] building the reference DeepSpeed {REFERENCE_VERSION} venv in {VENV} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt")]
    # transformers: the sequence-parallel benchmark's model (same pin as this project's client tests)
    subprocess.run([*pip, "torch", "numpy", "setuptools", "wheel", "transformers==5.24.0"], check=True)
    # DeepSpeed's setup.py imports torch, so it must build against the venv's torch (no isolation);
    # DS_BUILD_OPS=0 keeps it a pure-Python install whose ops JIT-build only if used.
    subprocess.run(
        [*pip, "--no-build-isolation", f"deepspeed=={REFERENCE_VERSION}"],
        check=True,
        env={**os.environ, "DS_BUILD_OPS": "0"},
    )
    return python


def reference_bin(name: str) -> Path:
    """A console script (e.g. `deepspeed`) of the reference venv."""
    return reference_python().parent / name
