"""The ``launch`` fixture: run a client script (``scripts/``) on 2 CPU ranks the way users do.

The clients (transformers, accelerate, lightning) are test-only dependencies, installed by the
``clients`` nox session; tests that need one skip when it is missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from _launching import Run, command, run_checked


@pytest.fixture
def launch(tmp_path: Path) -> Callable[..., Run]:
    """``launch(launcher, script, result, *args)``: run ``script`` on 2 ranks, return its results.

    ``launcher`` is ``"deepspeed"`` (this project's launcher) or ``"accelerate"`` (``accelerate launch``).
    The script writes ``<out>/<result>.rank<r>.json``; a non-zero exit fails the test with the log tail.
    """
    out = tmp_path / "out"

    def run(launcher: str, script: str, result: str, *args: str) -> Run:
        cmd = [*command(launcher, script), "--output_dir", str(out), "--result", result, *args]
        log = run_checked(cmd, tmp_path)
        results = [json.loads((out / f"{result}.rank{r}.json").read_text()) for r in range(2)]
        return Run(out=out, results=results, log=log)

    return run
