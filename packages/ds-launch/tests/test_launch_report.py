"""``ds_report``: a real run prints the versions, the accelerator and the backends."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from ds_launch.report import build_report


@pytest.mark.timeout(120)
def test_ds_report_runs_and_reports():
    done = subprocess.run(
        [sys.executable, "-c", "from ds_launch.report import main; main()"],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()

    def value(name: str) -> str:
        found = [line for line in lines if line.startswith(name + " ..")]
        assert len(found) == 1, name
        return found[0].split(" ", len(name.split()) + 1)[-1].strip()

    assert value("torch version") == importlib.metadata.version("torch")
    assert value("ds-launch version") == importlib.metadata.version("ds-launch")
    text = done.stdout
    assert "gloo [YES]" in text
    assert "accelerator" in text and "communication backend" in text
    assert "FusedAdam" in text


def test_flags_hide_sections():
    text = build_report(hide_operator_status=True, hide_errors_and_warnings=True)
    assert "op name" not in text and "errors:" not in text
