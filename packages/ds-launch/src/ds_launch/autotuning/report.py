"""What the autotuner shows: a live line per experiment, the final tables, and the optimal config files."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ds_launch.autotuning.runner import PRUNED, ExperimentResult, write_json
from ds_launch.autotuning.space import Experiment

UNITS = {"throughput": "samples/s", "latency": "ms/step", "flops": "FLOP/s per GPU"}
PREFIX = "[autotuning]"


@dataclass(frozen=True)
class Record:
    """One configuration considered: the experiment, how it ended, and its metric (None unless ok)."""

    exp: Experiment
    result: ExperimentResult
    value: float | None


def best_of(records: Sequence[Record], *, lower_is_better: bool) -> Record | None:
    """The record with the best metric (None if nothing measured)."""
    measured = [r for r in records if r.value is not None]
    if not measured:
        return None
    pick = min if lower_is_better else max
    return pick(measured, key=lambda r: r.value if r.value is not None else 0.0)  # all measured here


class Progress:
    """Prints one line when an experiment starts and one when it ends (experiment n of m, best so far)."""

    def __init__(self, *, metric: str, lower_is_better: bool, stream: TextIO | None = None) -> None:
        self.metric = metric
        self.lower_is_better = lower_is_better
        self.stream = stream or sys.stdout
        self.done = 0
        self.planned = 0

    def say(self, text: str) -> None:
        """One line, flushed at once."""
        print(f"{PREFIX} {text}", file=self.stream, flush=True)

    def starting(self, name: str, what: str) -> None:
        """Experiment ``name`` is launched."""
        self.say(f"experiment {self.done + 1}/{max(self.planned, self.done + 1)} {name} ({what}): running")

    def finished(self, record: Record, records: Sequence[Record]) -> None:
        """Experiment finished: its outcome and the best so far."""
        self.done += 1
        result = record.result
        outcome = (
            f"{self.metric} {record.value:.4g} {UNITS[self.metric]}"
            if record.value is not None
            else f"{result.status.upper()}: {result.error}"
        )
        best = best_of(records, lower_is_better=self.lower_is_better)
        best_text = (
            f"{best.result.name} ({best.value:.4g})"
            if best is not None and best.value is not None
            else "none yet"
        )
        reused = " (previous result reused)" if result.reused else ""
        self.say(
            f"experiment {self.done}/{max(self.planned, self.done)} {result.name}: {outcome}{reused} "
            f"| best so far: {best_text}"
        )

    def pruned(self, name: str, reason: str) -> None:
        """A configuration skipped without launching."""
        self.say(f"pruned {name}: {reason}")


def _pipe_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    line = lambda row: "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"  # noqa: E731
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def summary_text(records: Sequence[Record], *, metric: str, lower_is_better: bool, duration_s: float) -> str:
    """DeepSpeed's summary table (one row per tuning space and a global row), then every experiment."""
    spaces = sorted({r.exp.space for r in records})
    rows = []
    for space in [*spaces, "global"]:
        members = [r for r in records if space in ("global", r.exp.space) and r.result.status != PRUNED]
        best = best_of(members, lower_is_better=lower_is_better)
        rows.append(
            [
                space,
                len(members),
                f"{best.value:.6g}" if best and best.value is not None else 0,
                best.result.name if best else None,
            ]
        )
    head = _pipe_table(["tuning_space", "num_experiments", "best_metric_val", "best_exp_name"], rows)
    detail_rows = [
        [
            r.result.name,
            r.exp.stage,
            r.exp.micro_batch,
            r.exp.accumulation,
            r.exp.train_batch_size,
            r.result.status,
            f"{r.value:.6g}" if r.value is not None else "",
            (r.result.error or "")[:100],
        ]
        for r in records
    ]
    detail = _pipe_table(
        [
            "experiment",
            "stage",
            "micro_batch",
            "gas",
            "train_batch_size",
            "status",
            f"{metric} ({UNITS[metric]})",
            "note",
        ],
        detail_rows,
    )
    launched = sum(1 for r in records if r.result.status != PRUNED and not r.result.reused)
    return (
        f"{head}\n\n{detail}\n\nTuning completed in {duration_s:.1f} s. Experiments run: {launched}, "
        f"reused: {sum(1 for r in records if r.result.reused)}, "
        f"pruned: {sum(1 for r in records if r.result.status == PRUNED)}.\n"
    )


def optimal_config(best: Record, results_dir: Path) -> dict[str, Any]:
    """The best experiment's config without its ``autotuning`` section (so it trains normally)."""
    config = json.loads((results_dir / best.result.name / "ds_config.json").read_text(encoding="utf-8"))
    config.pop("autotuning", None)
    return config


def write_optimal(best: Record, results_dir: Path, command_text: str) -> Path:
    """Write ``ds_config_optimal.json`` and ``cmd_optimal.txt`` into ``results_dir``; returns the config path."""
    path = results_dir / "ds_config_optimal.json"
    write_json(path, optimal_config(best, results_dir))
    (results_dir / "cmd_optimal.txt").write_text(command_text + "\n", encoding="utf-8")
    return path
