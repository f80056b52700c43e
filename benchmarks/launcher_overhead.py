"""Launcher overhead: ``deepspeed --num_gpus 2 noop.py``, ours against the reference and torchrun.

Each launcher starts two ranks of a script that does nothing, so the wall time is the launcher's own
cost (interpreter start-up, imports, process management). The three launchers run interleaved, round
by round, so machine noise hits them alike; the report gives the median and best of each and the
ratios of the medians, all from this one run.

    python benchmarks/launcher_overhead.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOOP = "import sys\nsys.exit(0)\n"


def reference_bin_dir() -> Path:
    """The reference DeepSpeed venv's bin directory (benchmarks/_reference.py creates it on demand)."""
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks._reference import reference_python
    except ImportError:
        return Path("/tmp/refds/bin")
    return Path(reference_python()).parent


def launchers(noop: Path) -> dict[str, list[str]]:
    """The commands to compare, each starting two ranks of ``noop``."""
    ours = Path(sys.executable).parent / "deepspeed"
    ref = reference_bin_dir() / "deepspeed"
    torchrun = Path(sys.executable).parent / "torchrun"
    commands = {"ours": [str(ours), "--num_gpus", "2", str(noop)]}
    if ref.exists():
        commands["reference deepspeed"] = [str(ref), "--num_gpus", "2", str(noop)]
    else:
        print(f"reference launcher not found at {ref}; skipping it", file=sys.stderr)
    if torchrun.exists() or shutil.which("torchrun"):
        commands["torchrun"] = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(noop)]
    return commands


def time_once(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall seconds of one launch; a failed launch aborts the benchmark (its time would mean nothing)."""
    start = time.perf_counter()
    done = subprocess.run(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300, check=False
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"{argv[0]} failed with exit code {done.returncode}:\n{done.stderr.decode()[-2000:]}"
        )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        noop = work / "noop.py"
        noop.write_text(NOOP)
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        # Hostfile-less runs on every launcher; a job hostfile on the machine would change the test.
        env.pop("CUDA_VISIBLE_DEVICES", None)
        commands = launchers(noop)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for argv in commands.values():  # warm-up: page cache, .pyc files
            time_once(argv, env, work)
        for _ in range(args.repeats):
            for name, argv in commands.items():
                times[name].append(time_once(argv, env, work))
    print(f"launcher overhead, 2 no-op ranks, {args.repeats} repetitions each (seconds)")
    print(f"{'launcher':<22}{'median':>9}{'best':>9}")
    for name, samples in times.items():
        print(f"{name:<22}{statistics.median(samples):>9.3f}{min(samples):>9.3f}")
    ours = statistics.median(times["ours"])
    for name in times:
        if name != "ours":
            print(f"{name} / ours (median): {statistics.median(times[name]) / ours:.1f}x")


if __name__ == "__main__":
    main()
