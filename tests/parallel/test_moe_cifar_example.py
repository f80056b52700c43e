"""DeepSpeedExamples' training/cifar/cifar10_deepspeed.py, unchanged, on 2 CPU ranks through the deepspeed
launcher, plain and with --moe (expert parallel size 2), on synthetic CIFAR-shaped data from a torchvision
stand-in (tests/parallel/cifar_standin). The script is copied from the DeepSpeedExamples mirror at test
time; without the mirror (CI) the test skips and test_moe_cifar_api.py covers the same API surface."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(420)

MIRROR = Path(os.environ.get("DS_EXAMPLES_MIRROR", "/work/.mirror/deepspeedai+DeepSpeedExamples/repo"))
SCRIPT = "training/cifar/cifar10_deepspeed.py"
STANDIN = Path(__file__).parent / "cifar_standin"
CONSOLE = Path(sys.executable).parent / "deepspeed"


def _script(tmp_path: Path) -> Path:
    """The example, from the mirror's working tree or (a bare mirror) its HEAD."""
    dest = tmp_path / "cifar10_deepspeed.py"
    if (MIRROR / SCRIPT).is_file():
        shutil.copy(MIRROR / SCRIPT, dest)
        return dest
    if MIRROR.is_dir():
        shown = subprocess.run(
            ["git", "-C", str(MIRROR), "show", f"HEAD:{SCRIPT}"], capture_output=True, text=True
        )
        if shown.returncode == 0:
            dest.write_text(shown.stdout)
            return dest
    pytest.skip(f"DeepSpeedExamples mirror not available at {MIRROR}")


def _run(tmp_path: Path, extra: list[str]) -> subprocess.CompletedProcess:
    from ds_comm.testing import free_port

    script = _script(tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(STANDIN), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "CIFAR_STANDIN_TRAIN": "64",
        "CIFAR_STANDIN_TEST": "20",
    }
    launcher = (
        [str(CONSOLE)]
        if CONSOLE.exists()
        else [sys.executable, "-c", "from ds_launch.cli import main; main()"]
    )
    cmd = [
        *launcher,
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        str(script),
        "--deepspeed",
        "--epochs",
        "1",
        "--log-interval",
        "2",
        "--dtype",
        "fp32",
        *extra,
    ]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)


def _check(done: subprocess.CompletedProcess) -> None:
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    losses = [float(m) for m in re.findall(r"\[ 1,\s+\d+\] loss:\s+([0-9.]+)", out)]
    assert len(losses) == 2, out[-4000:]  # 64 samples / (8 per rank x 2 ranks) = 4 steps, printed every 2
    assert out.count("Finished Training") == 2
    assert "Accuracy of the network on the 20 test images" in out


def test_cifar_example_plain(tmp_path: Path) -> None:
    _check(_run(tmp_path, []))


def test_cifar_example_moe_ep2(tmp_path: Path) -> None:
    done = _run(
        tmp_path,
        [
            "--moe",
            "--ep-world-size",
            "2",
            "--num-experts",
            "2",
            "--top-k",
            "1",
            "--noisy-gate-policy",
            "RSample",
            "--moe-param-group",
        ],
    )
    _check(done)


def test_cifar_example_moe_zero2_residual_top2(tmp_path: Path) -> None:
    done = _run(
        tmp_path,
        [
            "--moe",
            "--ep-world-size",
            "2",
            "--num-experts",
            "2",
            "4",
            "--top-k",
            "2",
            "--mlp-type",
            "residual",
            "--moe-param-group",
            "--stage",
            "2",
        ],
    )
    _check(done)
