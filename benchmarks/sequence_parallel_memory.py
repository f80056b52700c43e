"""The longest sequence one training step fits in a fixed per-rank memory budget, on CPU ranks (gloo):
without sequence parallelism, with ALST's tiling alone (TiledMLP on every MLP, TiledFusedLogitsLoss
for the LM head and loss), with Ulysses SP 2, and with SP 2 plus tiling, for this project and the
reference DeepSpeed side by side (each side's rows, then the ratios ours / reference).

Both sides run the same file, benchmarks/_sp_memory_worker.py, which uses only DeepSpeed's public names
(``deepspeed.comm.init_distributed``, ``deepspeed.runtime.sequence_parallel.ulysses_sp``'s
``UlyssesSPAttentionHF.register_with_transformers``, ``UlyssesSPDataLoaderAdapter``, ``TiledMLP``,
``TiledFusedLogitsLoss``): ours under this interpreter, the reference under the reference venv's
(benchmarks/_reference.py; ``DS_REFERENCE_PYTHON`` names it; it needs ``transformers`` installed). SP
rows run 2 ranks under ``python -m torch.distributed.run`` of the side's own torch; the no-SP rows run
one plain process. A run that fails shows its exception line in its row. A small Llama (transformers,
built from a config) is doubled in sequence length from 512 until a step no longer fits the budget.

Memory is counted neutrally by benchmarks/_live_bytes.py, the same torch-only code on both sides: the
peak bytes of tensors created during forward + backward on a rank (parameter gradients included; the
parameters and the batch, made before, are not; no optimizer), the largest over the ranks, so the figure
depends on no allocator and not on machine load.

    python benchmarks/sequence_parallel_memory.py [--budget-mib 48] [--max-seq 32768]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_sp_memory_worker.py"
sys.path.insert(0, str(HERE.parent))

ROWS = [
    ("no SP (1 rank)", 1, False),
    ("no SP + TiledMLP + TiledFusedLogitsLoss", 1, True),
    ("Ulysses SP 2 (2 ranks)", 2, False),
    ("SP 2 + TiledMLP + TiledFusedLogitsLoss", 2, True),
]


def _versions(python: Path) -> str:
    probe = (
        "import importlib.metadata as m, torch;"
        "print(f\"deepspeed {m.version('deepspeed')}, torch {torch.__version__}, "
        "transformers {m.version('transformers')}\")"
    )
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else f"unusable: {_error_line(out.stderr)}"


def _error_line(stderr: str) -> str:
    """The line naming the exception of a failed run (the last ``...Error: ...`` line), else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0]]
    return (errors or lines or ["no output"])[-1]


def run_side(python: Path, sp: int, tiled: bool, budget: int, max_seq: int) -> dict[str, Any]:
    """One side's doubling for one row: ``{"peaks": {seq: bytes}, "losses": {seq: loss}}``, or
    ``{"error": line}`` when it failed."""
    cmd = [str(python)]
    if sp > 1:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={sp}"]
    cmd += [str(WORKER), f"--budget={budget}", f"--max-seq={max_seq}"] + (["--tiled"] if tiled else [])
    # One thread per rank: 2 ranks on a 2-core machine; the memory figures do not depend on it.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE, timeout=3600)
    for line in done.stdout.splitlines():
        if line.startswith("SPMEM "):
            found = json.loads(line[len("SPMEM ") :])
            return {key: {int(k): v for k, v in found[key].items()} for key in ("peaks", "losses")}
    return {"error": f"exit {done.returncode}: {_error_line(done.stderr)}"}


def longest(peaks: dict[int, int], budget: int) -> int:
    """The longest sequence of the doubling whose peak fits, 0 if none."""
    fits = [seq for seq, peak in peaks.items() if peak <= budget]
    return max(fits, default=0)


def _mib(peaks: dict[int, int]) -> str:
    return ", ".join(f"{seq}: {peak / 2**20:.1f}" for seq, peak in peaks.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-mib", type=float, default=48.0)
    parser.add_argument("--max-seq", type=int, default=32768)
    args = parser.parse_args(argv)
    try:
        import transformers  # noqa: F401 - the model comes from it
    except ImportError:
        print("sequence_parallel_memory: transformers is not installed (the clients' dependency); skipped")
        return 0
    from _sp_memory_worker import HEADS, HIDDEN, INNER, KV, LAYERS, VOCAB

    from benchmarks._reference import reference_python

    budget = int(args.budget_mib * 2**20)
    sides = {"ours": Path(sys.executable), "reference": reference_python()}
    print(
        f"$ python benchmarks/sequence_parallel_memory.py --budget-mib {args.budget_mib:g} --max-seq {args.max_seq}"
    )
    for name, python in sides.items():
        print(f"{name:9s}: {python} ({_versions(python)})")
    print(
        f"{platform.node()} ({os.cpu_count()} CPUs), gloo; SP rows: 2 ranks via torch.distributed.run, "
        "one thread each; both sides run benchmarks/_sp_memory_worker.py unchanged"
    )
    print(
        f"budget {args.budget_mib:g} MiB per rank; Llama hidden {HIDDEN}, inner {INNER}, vocab {VOCAB}, "
        f"{LAYERS} layers, {HEADS} heads / {KV} KV heads, batch 1, sdpa; peak live tensor bytes of "
        "forward+backward (benchmarks/_live_bytes.py), largest rank; sequence doubled from 512"
    )
    print()
    print(f"{'row':42s} {'side':10s} {'longest':>7s} {'vs no SP':>8s}  peak MiB by seq")
    base: dict[str, int] = {}
    failed: list[str] = []
    for row, sp, tiled in ROWS:
        results = {name: run_side(python, sp, tiled, budget, args.max_seq) for name, python in sides.items()}
        for name, result in results.items():
            label = row if name == "ours" else ""
            if "error" in result:
                print(f"{label:42s} {name:10s} {'-':>7s} {'-':>8s}  did not run: {result['error']}")
                failed.append(f"{name} {row}")
                continue
            best = longest(result["peaks"], budget)
            base.setdefault(name, best)
            gain = f"{best / base[name]:.1f}x" if base[name] else "-"
            print(f"{label:42s} {name:10s} {best:7d} {gain:>8s}  {_mib(result['peaks'])}")
        ours, ref = results["ours"], results["reference"]
        if "error" in ours or "error" in ref:
            continue
        common = [seq for seq in ours["peaks"] if seq in ref["peaks"]]
        ref_best = longest(ref["peaks"], budget)
        longest_ratio = f"{longest(ours['peaks'], budget) / ref_best:.2f}" if ref_best else "-"
        peak_ratios = ", ".join(f"{seq}: {ours['peaks'][seq] / ref['peaks'][seq]:.3f}" for seq in common)
        loss_gap = max(abs(ours["losses"][seq] - ref["losses"][seq]) for seq in common)
        print(
            f"{'':42s} {'ours/ref':10s} {longest_ratio:>7s} {'':8s}  peak ratio by seq: {peak_ratios}; "
            f"largest loss difference {loss_gap:.2e}"
        )
    print()
    print(
        "ours/ref: longest > 1 means ours trains a longer sequence in the budget, a peak ratio < 1 that ours "
        "holds less; the first row runs no DeepSpeed code on either side (plain transformers, the baseline)"
    )
    print(f"did not run: {'; '.join(failed)}" if failed else "every row ran on both sides (CPU, gloo)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
