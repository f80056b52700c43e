"""Run one experiment and say how it went.

Note: [experiment files] As DeepSpeed lays them out: ``exps_dir/<name>.json`` describes the experiment;
``results_dir/<name>/`` holds ``ds_config.json`` (the config it ran with), ``cmd.txt`` (the command),
``stdout.log`` / ``stderr.log`` (the whole job's output), ``exp.json`` (the description plus ``status``,
``error`` and ``results``) and ``metrics.json`` (written by the engine, Note [autotuning protocol]).
``exp.json`` is written with status ``running`` before the launch and rewritten when it ends, so a
tuning that was interrupted never mistakes a half-run experiment for a finished one. Every write is
atomic.

An experiment is ``ok`` when the job exits 0 and the engine wrote its file; ``oom`` when it failed
with an out-of-memory error (or was SIGKILLed, usually the kernel's OOM killer); ``failed`` on any
other failure; ``no_metrics`` when it exited 0 without measuring (the script ran fewer steps than the
profile window needs).
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ds_accel.atomic_files import atomic_write_json
from ds_launch.autotuning.command import LaunchCommand
from ds_launch.supervisor import ProcessSpec, Supervisor

OK, OOM, FAILED, NO_METRICS, PRUNED = "ok", "oom", "failed", "no_metrics", "pruned"
FINISHED = (OK, OOM, FAILED, NO_METRICS)
_OOM = re.compile(r"out of memory|OutOfMemoryError|\bMemoryError\b|Cannot allocate memory|ALLOC_FAILED", re.I)
_ERROR = re.compile(r"\b\w*(Error|Exception|Interrupt)\b(:|$)|\berror:")
_SIGKILL_EXIT = 128 + signal.SIGKILL
_PREFIXES = re.compile(
    r"^(\[deepspeed\]\s*\|?\s*)?(\[rank\d+\]:\s*)?"
)  # the launcher's and torch's line prefixes
# The launcher's closing report repeats a rank's error line after who failed: keep the error line.
_REPORT = re.compile(r"^\[deepspeed\] .* exited with code \d+: (\[rank\d+\]:? )?")


class TuningInterrupted(Exception):
    """The tuning process was asked to stop (SIGINT/SIGTERM/SIGHUP) during an experiment."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


@dataclass(frozen=True)
class ExperimentResult:
    """How one experiment ended; ``output`` is what the engine wrote (metrics or model info)."""

    name: str
    status: str
    output: Mapping[str, Any] | None = None
    error: str | None = None
    reused: bool = False


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (Note [atomic writes] in ds_accel.atomic_files)."""
    atomic_write_json(path, payload, indent=2, sort_keys=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _tail(path: Path, limit: int = 65536) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - limit))
            return fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []


def classify(exit_code: int, produced: bool, lines: list[str]) -> tuple[str, str | None]:
    """``(status, error)`` from the job's exit code, whether the engine wrote its file, and its output."""
    if exit_code == 0:
        return (
            (OK, None)
            if produced
            else (
                NO_METRICS,
                "the job ended before the engine measured anything "
                "(run more steps than autotuning.end_profile_step + 1)",
            )
        )
    text = [_PREFIXES.sub("", _REPORT.sub("", line.strip())) for line in lines if line.strip()]
    errors = [line for line in text if _ERROR.search(line)]
    detail = (errors or text or [f"exit code {exit_code}"])[-1]
    if any(_OOM.search(line) for line in text):
        return OOM, next(line for line in reversed(text) if _OOM.search(line))
    if exit_code == _SIGKILL_EXIT:
        return OOM, f"killed by SIGKILL (usually the out-of-memory killer); {detail}"
    return FAILED, f"exit code {exit_code}: {detail}"


class ExperimentRunner:
    """Launches experiments through this launcher, one after another, under Note [experiment files]."""

    def __init__(
        self,
        *,
        command: LaunchCommand,
        results_dir: Path,
        exps_dir: Path,
        reuse: bool,
        env: Mapping[str, str],
    ) -> None:
        self.command = command
        self.results_dir = results_dir
        self.exps_dir = exps_dir
        self.reuse = reuse
        self.env = dict(env)
        self.launched = 0

    def result_dir(self, name: str) -> Path:
        """``results_dir/<name>``."""
        return self.results_dir / name

    def record_pruned(self, name: str, config: Mapping[str, Any], reason: str) -> ExperimentResult:
        """Record a configuration that is never launched."""
        write_json(
            self.result_dir(name) / "exp.json",
            {"name": name, "ds_config": dict(config), "status": PRUNED, "error": reason},
        )
        return ExperimentResult(name, PRUNED, error=reason)

    def _previous(self, name: str, config: Mapping[str, Any], output_path: Path) -> ExperimentResult | None:
        """A finished result of the same experiment with the same config (``overwrite: false``)."""
        stored = _read_json(self.result_dir(name) / "exp.json")
        if not self.reuse or not isinstance(stored, dict) or stored.get("ds_config") != config:
            return None
        status = stored.get("status")
        output = _read_json(output_path) if status == OK else None
        if status not in FINISHED or (status == OK and not isinstance(output, dict)):
            return None
        return ExperimentResult(name, status, output, stored.get("error"), reused=True)

    def run(self, name: str, config: Mapping[str, Any], output_path: Path) -> ExperimentResult:
        """Run experiment ``name`` with ``config``; the engine is expected to write ``output_path``."""
        previous = self._previous(name, config, output_path)
        if previous is not None:
            return previous
        folder = self.result_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        output_path.unlink(missing_ok=True)
        config_path = folder / "ds_config.json"
        write_json(config_path, dict(config))
        port = self.command.port(self.launched)
        self.launched += 1
        args = self.command.deepspeed_args(str(config_path), config, port)
        (folder / "cmd.txt").write_text(LaunchCommand.display(args) + "\n", encoding="utf-8")
        description = {
            "name": name,
            "ds_config": dict(config),
            "user_script": self.command.user_script,
            "user_args": self.command.script_args(str(config_path), config),
            "master_port": port,
            "result_dir": str(folder),
        }
        write_json(self.exps_dir / f"{name}.json", description)
        write_json(folder / "exp.json", {**description, "status": "running"})
        exit_code = self._launch(name, self.command.argv(str(config_path), config, port), folder)
        output = _read_json(output_path)
        produced = isinstance(output, dict)
        status, error = classify(
            exit_code, produced, _tail(folder / "stderr.log") + _tail(folder / "stdout.log")
        )
        write_json(
            folder / "exp.json",
            {**description, "status": status, "error": error, "results": output if status == OK else None},
        )
        return ExperimentResult(name, status, output if status == OK else None, error)

    def _launch(self, name: str, argv: list[str], folder: Path) -> int:
        with open(folder / "stdout.log", "wb") as out, open(folder / "stderr.log", "wb") as err:
            result = Supervisor(stdout=out, stderr=err).run(
                [ProcessSpec(name=f"experiment {name}", argv=tuple(argv), env=self.env)]
            )
        if result.signal is not None:
            raise TuningInterrupted(result.signal)
        return result.exit_code
