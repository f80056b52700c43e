"""DeepSpeedExamples' training/DeepSpeed-ZenFlow/benchmark/zf_benchmark.py, unchanged, on 2 CPU ranks through
the ``deepspeed`` launcher (a small ``--hidden_dim``; the script builds its model and random data itself).
The script is copied from the DeepSpeedExamples mirror at test time; without the mirror the test skips
(tests/engine/test_engine_zenflow.py covers ZenFlow through ``deepspeed.initialize``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

MIRROR = Path(os.environ.get("DS_EXAMPLES_MIRROR", "/work/.mirror/deepspeedai+DeepSpeedExamples/repo"))
SCRIPT = "training/DeepSpeed-ZenFlow/benchmark/zf_benchmark.py"
CONSOLE = Path(sys.executable).parent / "deepspeed"


def _script(tmp_path: Path) -> Path:
    dest = tmp_path / "zf_benchmark.py"
    if (MIRROR / SCRIPT).is_file():
        dest.write_bytes((MIRROR / SCRIPT).read_bytes())
        return dest
    if MIRROR.is_dir():
        shown = subprocess.run(
            ["git", "-C", str(MIRROR), "show", f"HEAD:{SCRIPT}"], capture_output=True, text=True
        )
        if shown.returncode == 0:
            dest.write_text(shown.stdout)
            return dest
    pytest.skip(f"DeepSpeedExamples mirror not available at {MIRROR}")


@pytest.mark.parametrize(
    ("dtype", "overlap"), [("torch.float32", 0), ("torch.float32", 1), ("torch.bfloat16", 1)]
)
def test_zf_benchmark_runs_unchanged(tmp_path: Path, dtype: str, overlap: int) -> None:
    from ds_comm.testing import free_port

    script = _script(tmp_path)
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
        "--hidden_dim",
        "32",
        "--nlayers",
        "2",
        "--iteration",
        "3",
        "--dtype",
        dtype,
        "--pin_memory_opts",
        "0",
        "--topk_ratios",
        "0.25",
        "--update_intervals",
        "2",
        "--overlap_steps",
        str(overlap),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert out.count("Step 5 time") == 1, out[
        -4000:
    ]  # 3 iterations x update_interval 2 = 6 steps, rank 0 prints
    assert f"update_interval=2 overlap_step={bool(overlap)}" in out
    report = (tmp_path / "zenflow_report.log").read_text().strip().splitlines()
    assert report == [report[0]] and report[0].startswith(f"0,0.25,2,{bool(overlap)},"), report
