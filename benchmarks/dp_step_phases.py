"""Data-parallel step, phase by phase, against the reference DeepSpeed on CPU ranks.

One user script (``benchmarks/workloads/gpt_phases.py``: a GPT, fp32, AdamW, WarmupLR, clipping at
1.0, global batch 16) runs under each side's own ``deepspeed`` launcher, for several model sizes and
rank counts; each launch trains ZeRO stages 0-3 in turn on the same initial weights. The two sides
alternate launch by launch, round after round, so machine noise hits both alike. Reported per model
size, rank count, stage and side: the median over rounds of each phase (forward, backward, step, gap;
the script's medians over its timed steps and ranks), the step time ours/reference, and the time from
launch to the end of the first step.

    python benchmarks/dp_step_phases.py [--rounds 3] [--sizes 1M,5M,25M,100M] [--ranks 2,4] [--omp N]

Bigger models get shorter sequences (``SEQ``) so that a 100M launch stays within minutes on 2 cores;
what the comparison is about, gradient reduction and the optimizer, grows with the parameter count
either way. Threads: by default ``OMP_NUM_THREADS`` is left unset, as a user who types the same
command gets it: each launcher applies its own default (this project's gives each local rank its
share of the cores, Note [threads per rank] in ``ds_launch.cores``; the reference leaves torch's
one-thread-per-core in every rank). ``--omp N`` sets it for both sides, which isolates what the
engines themselves do. One untimed warm-up launch per side comes first (page cache, .pyc files, the
reference's JIT-built shared-memory op), at the largest size and rank count of the run: on this
virtual machine memory that no process touched for a while is slow to fault in again (the first
100M launch after a quiet spell took 9.2-9.7 s on our side and 15.7-17.6 s on the reference's,
against 5.1 and 13.4 s the round after), and the warm-up, not the first timed launch, should pay it.
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
SCRIPT = REPO / "benchmarks" / "workloads" / "gpt_phases.py"
SEQ = {"1M": 64, "5M": 64, "25M": 32, "100M": 16}
PHASES = ("forward", "backward", "step", "gap", "total")
STAGES = (0, 1, 2, 3)
TARGET_STEP, TARGET_FIRST = 0.9, 0.33


def _launchers() -> dict[str, Path]:
    sys.path.insert(0, str(REPO))
    from benchmarks._reference import reference_bin

    return {"ours": Path(sys.executable).parent / "deepspeed", "reference": reference_bin("deepspeed")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SHM = Path("/dev/shm")


def _shm_files() -> set[str]:
    return {p.name for p in SHM.iterdir()} if SHM.is_dir() else set()


def _remove_left_in_shm(before: set[str]) -> float:
    """MiB of /dev/shm files a launch left behind after its processes ended, then removes them.

    DeepSpeed 0.19.8's shared-memory op never unlinks its ``deepspeed_allreduce_buffer_*`` files (66 MiB
    a rank and launch here): left in place they pile up in RAM across launches until a later launch is
    killed for memory, whichever side it is. The figure is reported per launch, for both sides."""
    left = [SHM / name for name in _shm_files() - before]
    total = 0
    for path in left:
        try:
            total += path.stat().st_size
            path.unlink()
        except OSError:
            pass
    return total / 2**20


def launch(
    launcher: Path, size: str, ranks: int, work: Path, steps: int, omp: int | None = None
) -> dict | None:
    """One launch of the workload: per stage, each phase's median over timed steps and ranks (None if
    it failed: the error is printed and the other launches go on)."""
    out = work / f"{launcher.parent.parent.name}-{size}-{ranks}-{time.monotonic_ns()}"
    cmd = [
        str(launcher),
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(_free_port()),
        str(SCRIPT),
        "--size",
        size,
        "--seq",
        str(SEQ[size]),
        "--steps",
        str(steps),
        "--out",
        str(out),
    ]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", PYTHONWARNINGS="ignore")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("OMP_NUM_THREADS", None)
    # Bytecode as a user has it: pip byte-compiled the reference at install, and the warm-up launch
    # writes this project's (editable) .pyc files; with writing off, only this side recompiled its
    # modules at every launch.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if launcher.resolve() != (Path(sys.executable).parent / "deepspeed").resolve():
        env.pop("PYTHONPATH", None)  # it may name this project's sources, which would shadow the reference's
    if omp is not None:
        env["OMP_NUM_THREADS"] = str(omp)
    before = _shm_files()
    launched = time.time()
    done = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=1800)
    left_mb = _remove_left_in_shm(before)
    files = [Path(f"{out}.rank{r}") for r in range(ranks)]
    if not all(f.exists() for f in files):
        lines = (done.stderr or done.stdout or "no output").strip().splitlines()
        print(f"[bench] {launcher} failed ({done.returncode}): {lines[-1] if lines else ''}", file=sys.stderr)
        print(done.stderr[-3000:], file=sys.stderr)
        return None
    reports = [json.loads(f.read_text()) for f in files]
    result: dict = {
        "shm_left_mb": left_mb,
        "first_step_s": reports[0]["first_step_at"] - launched,
        "params": reports[0]["params"],
        "peak_rss_mb": max(r["peak_rss_kb"] for r in reports) / 1024,
        "stages": {},
    }
    for stage in STAGES:
        per = [r["stages"][str(stage)] for r in reports]
        result["stages"][stage] = {
            name: statistics.median(v for p in per for v in p["phases"][name]) for name in PHASES
        }
        result["stages"][stage]["final_loss"] = per[0]["final_loss"]
    return result


def summarise(runs: list[dict]) -> dict | None:
    """Median over rounds of every number a launch reports (None if no launch succeeded)."""
    if not runs:
        return None
    out: dict = {
        "first_step_s": statistics.median(r["first_step_s"] for r in runs),
        "shm_left_mb": statistics.median(r["shm_left_mb"] for r in runs),
        "params": runs[0]["params"],
        "stages": {},
    }
    for stage in STAGES:
        out["stages"][stage] = {
            k: statistics.median(r["stages"][stage][k] for r in runs) for k in runs[0]["stages"][stage]
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sizes", default="1M,5M,25M,100M")
    parser.add_argument("--ranks", default="2,4")
    parser.add_argument(
        "--omp", type=int, default=None, help="OMP_NUM_THREADS for both sides (default: unset)"
    )
    args = parser.parse_args()
    launchers = _launchers()
    combos = [(s, int(n)) for n in args.ranks.split(",") for s in args.sizes.split(",")]
    runs: dict = {(s, n, side): [] for s, n in combos for side in launchers}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        biggest = max(args.sizes.split(","), key=lambda s: float(s.rstrip("M")))
        most = max(int(n) for n in args.ranks.split(","))
        for launcher in launchers.values():  # warm-up, untimed
            launch(launcher, biggest, most, work, 1, args.omp)
        for rnd in range(args.rounds):
            for size, ranks in combos:
                sides = list(launchers.items())
                for side, launcher in sides if rnd % 2 == 0 else sides[::-1]:
                    r = launch(launcher, size, ranks, work, args.steps, args.omp)
                    if r is None:
                        print(f"round {rnd + 1} {size:>4} x{ranks} {side:<9} FAILED (see stderr)", flush=True)
                        continue
                    runs[(size, ranks, side)].append(r)
                    print(
                        f"round {rnd + 1} {size:>4} x{ranks} {side:<9} first_step_s={r['first_step_s']:.2f} "
                        + " ".join(f"z{s}={r['stages'][s]['total'] * 1e3:.0f}ms" for s in STAGES)
                        + f" shm_left={r['shm_left_mb']:.0f}MiB",
                        flush=True,
                    )
    threads = "unset (each launcher's default)" if args.omp is None else str(args.omp)
    report: dict = {"rounds": args.rounds, "steps": args.steps, "omp_num_threads": threads, "results": []}
    print(f"\nOMP_NUM_THREADS: {threads}; {os.cpu_count()} cores")
    print("\nper-phase medians (ms); ratio = ours / reference step time (total)")
    print(
        f"{'model':>5} {'ranks':>5} {'stage':>5} {'side':<9} "
        + " ".join(f"{p:>8}" for p in PHASES)
        + f" {'ratio':>6} {'loss':>9}"
    )
    for size, ranks in combos:
        ours, ref = summarise(runs[(size, ranks, "ours")]), summarise(runs[(size, ranks, "reference")])
        if ours is None or ref is None:
            print(f"{size:>5} {ranks:>5} no comparison: a side never completed a launch")
            continue
        for stage in STAGES:
            ratio = ours["stages"][stage]["total"] / ref["stages"][stage]["total"]
            for side, s in (("ours", ours), ("reference", ref)):
                ph = s["stages"][stage]
                print(
                    f"{size:>5} {ranks:>5} {stage:>5} {side:<9} "
                    + " ".join(f"{ph[p] * 1e3:8.1f}" for p in PHASES)
                    + (f" {ratio:6.3f}" if side == "ours" else " " * 7)
                    + f" {ph['final_loss']:9.5f}"
                )
            met = "met" if ratio <= TARGET_STEP else "NOT met"
            report["results"].append(
                {
                    "size": size,
                    "ranks": ranks,
                    "stage": stage,
                    "step_ratio": ratio,
                    "target": f"<= {TARGET_STEP} ({met})",
                    "ours": ours["stages"][stage],
                    "reference": ref["stages"][stage],
                }
            )
        first = ours["first_step_s"] / ref["first_step_s"]
        print(
            f"{size:>5} {ranks:>5} first step: ours {ours['first_step_s']:.2f} s, reference "
            f"{ref['first_step_s']:.2f} s, ratio {first:.3f} (target <= {TARGET_FIRST}: "
            f"{'met' if first <= TARGET_FIRST else 'NOT met'}); left in /dev/shm per launch: ours "
            f"{ours['shm_left_mb']:.0f} MiB, reference {ref['shm_left_mb']:.0f} MiB"
        )
        report["results"].append(
            {
                "size": size,
                "ranks": ranks,
                "first_step_ratio": first,
                "ours_first_step_s": ours["first_step_s"],
                "ref_first_step_s": ref["first_step_s"],
            }
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
