"""The same user script (examples/gpt/train.py) under this engine and under the reference DeepSpeed.

Each side is launched by its own ``deepspeed`` launcher with 2 CPU ranks and the example's
ds_config.json, at ZeRO stage 0 or the stage ``--stage`` names. Measured per run: time from launch to the end of the first optimizer step,
step time (median over the steps after the first two, over both ranks), peak RSS of a rank, and the
final loss. The two sides run interleaved, round after round, so machine noise hits both alike; the
report gives each side's median over rounds and the ratios ours / reference from this one run.

    python benchmarks/engine_vs_reference.py [--rounds 3] [--steps 40] [--stage 0|1|2|3]

Both sides get ``OMP_NUM_THREADS=1`` (2 ranks on a 2-core machine) and ``GLOO_SOCKET_IFNAME=lo``.
One untimed warm-up run per side comes first (page cache, .pyc files, the reference's JIT-built ops).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "gpt" / "train.py"
CONFIG = REPO / "examples" / "gpt" / "ds_config.json"
# Issue targets: step time and time to first step (stage 0); step time and peak RSS (stages 1-3).
TARGETS = {"step_s": 0.9, "first_step_s": 0.33}
SHARDED_TARGETS = {"step_s": 0.9, "peak_rss_mb": 1.0}


def reference_launcher() -> Path:
    """The reference venv's ``deepspeed`` (benchmarks/_reference.py builds the venv on demand)."""
    sys.path.insert(0, str(REPO))
    from benchmarks._reference import reference_python

    return Path(reference_python()).parent / "deepspeed"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_for_stage(stage: int, work: Path) -> Path:
    """The example's config with ``zero_optimization.stage`` set to ``stage``."""
    config = json.loads(CONFIG.read_text())
    config["zero_optimization"] = {**config.get("zero_optimization", {}), "stage": stage}
    path = work / f"ds_config_stage{stage}.json"
    path.write_text(json.dumps(config))
    return path


def run_once(
    launcher: Path, steps: int, work: Path, extra: list[str], config: Path = CONFIG
) -> dict[str, float]:
    """Launch 2 ranks of the example and summarise what they recorded."""
    metrics = work / f"metrics-{time.monotonic_ns()}"
    cmd = [
        str(launcher),
        "--num_gpus",
        "2",
        "--master_port",
        str(_free_port()),
        str(SCRIPT),
        "--deepspeed",
        "--deepspeed_config",
        str(config),
        "--steps",
        str(steps),
        "--log_interval",
        str(steps),
        "--metrics_json",
        str(metrics),
        *extra,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONWARNINGS="ignore")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    launched = time.time()
    done = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=1800)
    files = [Path(f"{metrics}.rank{r}") for r in range(2)]
    if not all(f.exists() for f in files):
        raise SystemExit(
            f"{launcher} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    if done.returncode != 0:  # both ranks finished and reported; only the shutdown failed
        print(f"note: {launcher} exited with {done.returncode} after every rank reported", file=sys.stderr)
    ranks = [json.loads(f.read_text()) for f in files]
    steady = [t for rank in ranks for t in rank["step_times"][2:]]
    return {
        "first_step_s": ranks[0]["first_step_at"] - launched,
        "step_s": statistics.median(steady),
        "peak_rss_mb": max(rank["peak_rss_kb"] for rank in ranks) / 1024,
        "final_loss": ranks[0]["final_loss"],
        "wall_s": time.time() - launched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--no-warmup", action="store_true")
    parser.add_argument(
        "--stage", type=int, default=0, choices=[0, 1, 2, 3], help="ZeRO stage for both sides"
    )
    parser.add_argument("script_args", nargs="*", help="extra arguments for train.py (after --)")
    args = parser.parse_args()
    sides = {"ours": Path(sys.executable).parent / "deepspeed", "reference": reference_launcher()}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = config_for_stage(args.stage, work)
        if not args.no_warmup:
            for launcher in sides.values():
                run_once(launcher, 3, work, args.script_args, config)
        for round_ in range(args.rounds):
            for name, launcher in sides.items():
                results[name].append(run_once(launcher, args.steps, work, args.script_args, config))
                print(
                    f"round {round_ + 1} {name:<9} "
                    + "  ".join(f"{k}={v:.4g}" for k, v in results[name][-1].items()),
                    flush=True,
                )
    summary = {
        name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in results.items()
    }
    ratios = {
        k: summary["ours"][k] / summary["reference"][k] for k in ("first_step_s", "step_s", "peak_rss_mb")
    }
    targets = TARGETS if args.stage == 0 else SHARDED_TARGETS
    print(f"\nZeRO stage {args.stage}, 2 CPU ranks")
    print(f"{'metric':<16}{'ours':>12}{'reference':>12}{'ratio':>9}  target")
    for key in ("step_s", "first_step_s", "peak_rss_mb", "final_loss"):
        ratio = summary["ours"][key] / summary["reference"][key]
        target = targets.get(key)
        verdict = "" if target is None else f"<= {target}  {'met' if ratio <= target else 'NOT met'}"
        print(
            f"{key:<16}{summary['ours'][key]:>12.4g}{summary['reference'][key]:>12.4g}{ratio:>9.3f}  {verdict}"
        )
    print(
        json.dumps(
            {
                "stage": args.stage,
                "summary": summary,
                "ratios": ratios,
                "rounds": args.rounds,
                "steps": args.steps,
            }
        )
    )


if __name__ == "__main__":
    main()
