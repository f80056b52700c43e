"""The search: profile the model once, then explore ZeRO stages and micro batch sizes with real runs.

Note: [autotuning search] For each requested stage (Note [tuning space]) in order 0-3:

1. the micro batch sizes are paired with the stage; pairs that cannot fit by Note [zero memory], or whose
   global batch is outside ``[min_train_batch_size, max_train_batch_size]``, are pruned (recorded, not run);
2. the rest run in the tuner's order (:mod:`ds_launch.autotuning.tuners`); an out-of-memory experiment
   prunes the stage's larger micro batches; a failure is recorded and the search goes on;
3. outside fast mode, the stage's knobs (reduce/all-gather buckets, overlap, ...) are then tried with the
   micro batches that ran, best first;

within a stage the search stops after ``tuner_early_stopping`` experiments without improvement or
``tuner_num_trials`` experiments. The best experiment overall (highest throughput/FLOPS, lowest latency)
gives ``ds_config_optimal.json``. Every stage asked for is explored, even when a lower one did better:
the measurement, not a heuristic, decides.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ds_launch.autotuning import space
from ds_launch.autotuning.command import LaunchCommand
from ds_launch.autotuning.memory import ModelFacts, largest_fitting_micro_batch, memory_prune_reason
from ds_launch.autotuning.report import Progress, Record, best_of, summary_text
from ds_launch.autotuning.runner import OK, OOM, ExperimentResult, ExperimentRunner
from ds_launch.autotuning.settings import TuningSettings
from ds_launch.autotuning.tuners import GridSearchTuner, make_tuner
from ds_launch.errors import LaunchError

PROFILE = "profile_model_info"
_OURS = re.compile(rf"^({PROFILE}|z[0-3]_gas\d+_tmbspg\d+(_.+)?)$")
_SUMMARY_FILES = ("summary.txt", "ds_config_optimal.json", "cmd_optimal.txt")


class Autotuner:
    """Explores configurations of the user's job by running it (Note [autotuning search])."""

    def __init__(
        self,
        *,
        user_config: Mapping[str, Any],
        settings: TuningSettings,
        command: LaunchCommand,
        world_size: int,
        env: Mapping[str, str],
        progress: Progress | None = None,
    ) -> None:
        if world_size % settings.mp_size:
            raise LaunchError(
                f"'autotuning.mp_size' {settings.mp_size} does not divide the {world_size} ranks"
            )
        self.user_config = dict(user_config)
        self.settings = settings
        self.command = command
        self.dp_world_size = world_size // settings.mp_size
        self.results_dir = Path(settings.results_dir).absolute()
        self.exps_dir = Path(settings.exps_dir).absolute()
        self.runner = ExperimentRunner(
            command=command,
            results_dir=self.results_dir,
            exps_dir=self.exps_dir,
            reuse=not settings.overwrite,
            env=env,
        )
        self.progress = progress or Progress(metric=settings.metric, lower_is_better=settings.lower_is_better)
        self.records: list[Record] = []
        self.facts: ModelFacts | None = None
        self.started = time.monotonic()
        self.half_precision = any(_enabled(user_config.get(k)) for k in ("fp16", "bf16", "bfloat16"))

    # --- set-up ------------------------------------------------------------------------------------
    def prepare_dirs(self) -> None:
        """Create the folders; with ``overwrite`` remove what earlier tunings left there (only that)."""
        if self.settings.overwrite:
            for folder in (self.results_dir, self.exps_dir):
                for entry in folder.iterdir() if folder.is_dir() else ():
                    stem = entry.name.removesuffix(".json") if entry.is_file() else entry.name
                    if entry.name in _SUMMARY_FILES and entry.is_file():
                        entry.unlink()
                    elif _OURS.match(stem):
                        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.exps_dir.mkdir(parents=True, exist_ok=True)

    def _autotuning_section(self, name: str, **extra: Any) -> dict[str, Any]:
        section = {
            k: v
            for k, v in (self.user_config.get("autotuning") or {}).items()
            if k not in ("results_dir", "exps_dir", "model_info", "model_info_path", "metric_path")
        }
        return {
            **section,
            "enabled": True,
            "metric_path": str(self.runner.result_dir(name) / "metrics.json"),
            **extra,
        }

    def profile_model(self, stages: list[int], micro_batch: int, accumulation: int) -> ModelFacts:
        """The model's size and activation memory: ``autotuning.model_info`` when it gives ``num_params``,
        else one short run of the script (Note [autotuning protocol])."""
        given = self.settings.model_info or {}
        if "num_params" in given:
            return ModelFacts.from_model_info(given, memory_override=self.settings.memory_per_device)
        # The most memory-frugal stage that is finished everywhere (stage 3 only when it is the one asked).
        stage = max([s for s in stages if s <= 2] or stages)
        exp = space.Experiment(stage, micro_batch, accumulation, self.dp_world_size)
        info_path = self.runner.result_dir(PROFILE) / "model_info.json"
        section = self._autotuning_section(
            PROFILE, model_info={"profile": True}, model_info_path=str(info_path)
        )
        config = space.experiment_config(exp, self.user_config, section)
        self.progress.say(
            f"profiling the model: one forward at ZeRO stage {stage}, micro batch {micro_batch}"
        )
        result = self.runner.run(PROFILE, config, info_path)
        if result.status != OK or result.output is None:
            raise LaunchError(
                f"the model profiling run failed ({result.status}: {result.error}); its output is in "
                f"{self.runner.result_dir(PROFILE)}",
                exit_code=1,
            )
        facts = ModelFacts.from_model_info(result.output, memory_override=self.settings.memory_per_device)
        self.progress.say(
            f"model: {facts.num_params:,} parameters, {facts.activation_bytes_per_sample:,.0f} bytes of "
            f"activations per sample, {facts.memory_per_device or 0:,} bytes per rank available"
        )
        return facts

    # --- the search --------------------------------------------------------------------------------
    def micro_batches(self, stages: list[int], low: int, accumulation: int) -> list[int]:
        """The micro batch sizes to try (Note [tuning space])."""
        explicit = space.explicit_micro_batches(self.user_config)
        if explicit is not None:
            return explicit
        high = self.settings.max_train_micro_batch_size_per_gpu
        if self.settings.max_train_batch_size:
            high = min(high, self.settings.max_train_batch_size // (accumulation * self.dp_world_size))
        assert self.facts is not None
        fits = [
            largest_fitting_micro_batch(
                self.facts,
                stage=s,
                dp_world_size=self.dp_world_size,
                half_precision=self.half_precision,
                mp_size=self.settings.mp_size,
            )
            for s in stages
        ]
        if fits and all(f is not None for f in fits):
            high = min(high, max(f for f in fits if f is not None))
        candidates = space.spread(low, high, self.settings.num_tuning_micro_batch_sizes)
        return candidates or [
            low
        ]  # nothing fits by the estimate: the smallest is kept, and pruned with its reason

    def prune_reason(self, exp: space.Experiment) -> str | None:
        """Why ``exp`` is not worth running (None: run it)."""
        if exp.train_batch_size < self.settings.min_train_batch_size:
            return f"train batch {exp.train_batch_size} < autotuning.min_train_batch_size"
        if self.settings.max_train_batch_size and exp.train_batch_size > self.settings.max_train_batch_size:
            return f"train batch {exp.train_batch_size} > autotuning.max_train_batch_size"
        assert self.facts is not None
        return memory_prune_reason(
            self.facts,
            stage=exp.stage,
            micro_batch=exp.micro_batch,
            dp_world_size=self.dp_world_size,
            half_precision=self.half_precision,
            mp_size=self.settings.mp_size,
        )

    def _signed(self, result: ExperimentResult) -> float | None:
        if result.status != OK or result.output is None:
            return None
        value = result.output.get(self.settings.metric)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def _prune(self, exp: space.Experiment, reason: str) -> None:
        config = space.experiment_config(exp, self.user_config, self._autotuning_section(exp.name))
        self.records.append(Record(exp, self.runner.record_pruned(exp.name, config, reason), None))
        self.progress.pruned(exp.name, reason)

    def _run(self, exp: space.Experiment) -> Record:
        config = space.experiment_config(exp, self.user_config, self._autotuning_section(exp.name))
        knobs = "".join(f", {k}={v}" for k, v in exp.knobs)
        self.progress.starting(
            exp.name,
            f"stage {exp.stage}, micro batch {exp.micro_batch}, accumulation {exp.accumulation}{knobs}",
        )
        result = self.runner.run(exp.name, config, self.runner.result_dir(exp.name) / "metrics.json")
        record = Record(exp, result, self._signed(result))
        self.records.append(record)
        self.progress.finished(record, self.records)
        return record

    def search(self, tuner: GridSearchTuner, stage_records: list[Record]) -> None:
        """Run ``tuner``'s candidates under early stopping, the trial budget and OOM pruning."""
        try:
            self._search(tuner, stage_records)
        finally:
            self.progress.planned = self.progress.done  # what was not run is no longer planned

    def _search(self, tuner: GridSearchTuner, stage_records: list[Record]) -> None:
        sign = -1.0 if self.settings.lower_is_better else 1.0
        measured = [r.value for r in stage_records if r.value is not None]
        best = (min if self.settings.lower_is_better else max)(measured) if measured else None
        since_best = 0
        while True:
            if tuner.pending and len(stage_records) >= self.settings.tuner_num_trials:
                self.progress.say(
                    f"stage search stopped after autotuning.tuner_num_trials={len(stage_records)} experiments"
                )
                return
            if tuner.pending and since_best >= self.settings.tuner_early_stopping:
                self.progress.say(
                    f"stage search stopped early: no improvement in the last {since_best} experiments"
                )
                return
            history = [(r.exp, None if r.value is None else sign * r.value) for r in stage_records]
            exp = tuner.next(history)
            if exp is None:
                return
            record = self._run(exp)
            stage_records.append(record)
            if record.value is not None and (best is None or sign * record.value > sign * best):
                best, since_best = record.value, 0
            else:
                since_best += 1
            if record.result.status == OOM:
                reason = f"micro batch {exp.micro_batch} already ran out of memory at stage {exp.stage}"

                def at_least(c: space.Experiment, at: int = exp.micro_batch) -> bool:
                    return c.micro_batch >= at

                for gone in tuner.discard(at_least):
                    self.progress.planned -= 1
                    self._prune(gone, reason)

    def tune_stage(self, stage: int, micro_batches: list[int], accumulation: int) -> None:
        """Micro batch sweep of ``stage``, then (outside fast mode) its knobs."""
        stage_records: list[Record] = []
        candidates = []
        for mb in micro_batches:
            exp = space.Experiment(stage, mb, accumulation, self.dp_world_size)
            reason = self.prune_reason(exp)
            if reason:
                self._prune(exp, reason)
            else:
                candidates.append(exp)
        self.progress.planned += min(len(candidates), self.settings.tuner_num_trials)
        self.search(make_tuner(self.settings.tuner_type, candidates), stage_records)
        grid = space.knob_grid(stage, self.user_config, fast=self.settings.fast)
        if self.settings.fast or grid == [()]:
            return
        ran = sorted(
            (r for r in stage_records if r.value is not None),
            key=lambda r: r.value or 0.0,
            reverse=not self.settings.lower_is_better,
        )
        knobbed = [
            space.Experiment(stage, r.exp.micro_batch, accumulation, self.dp_world_size, knobs)
            for r in ran
            for knobs in grid
        ]
        self.progress.planned += min(len(knobbed), self.settings.tuner_num_trials - len(stage_records))
        self.search(make_tuner(self.settings.tuner_type, knobbed), stage_records)

    def tune(self) -> Record | None:
        """Profile, explore every requested stage, and return the best record (None if nothing ran)."""
        self.prepare_dirs()
        args = self.command.user_args
        stages = space.requested_stages(self.user_config)
        accumulation = space.accumulation_steps(self.user_config, self.settings, args)
        low = min(
            space.explicit_micro_batches(self.user_config)
            or [space.smallest_micro_batch(self.user_config, self.settings, args)]
        )
        self.facts = self.profile_model(stages, low, accumulation)
        micro_batches = self.micro_batches(stages, low, accumulation)
        self.progress.say(
            f"exploring ZeRO stages {stages} x micro batch sizes {micro_batches} (accumulation "
            f"{accumulation}, {self.dp_world_size} data-parallel ranks, metric {self.settings.metric})"
        )
        for stage in stages:
            self.tune_stage(stage, micro_batches, accumulation)
        return best_of(self.records, lower_is_better=self.settings.lower_is_better)

    def summary(self) -> str:
        """The final tables (also written to ``results_dir/summary.txt``)."""
        text = summary_text(
            self.records,
            metric=self.settings.metric,
            lower_is_better=self.settings.lower_is_better,
            duration_s=time.monotonic() - self.started,
        )
        (self.results_dir / "summary.txt").write_text(text, encoding="utf-8")
        return text


def _enabled(section: Any) -> bool:
    return isinstance(section, dict) and section.get("enabled") is True
