"""The order in which a ZeRO stage's experiments run: grid search, random, or model based.

Every tuner holds the stage's candidates not yet run and hands out the next one given what has been
measured so far (``history``: each experiment run with its metric, None when it produced none, signed
so that larger is better). The search loop (:mod:`ds_launch.autotuning.autotuner`) applies early
stopping and the trial budget, and may discard candidates (e.g. larger micro batches after an OOM).

``model_based`` fits a small ridge regression of the metric on the configuration (log2 of the micro
batch, each numeric knob's log10, booleans as 0/1, other values one-hot) to the measured experiments and
runs the candidate it predicts best. Its first ``warmup`` picks spread over the space (each is the
candidate farthest from those already run), so the fit sees every feature vary. DeepSpeed's model-based
tuner uses an XGBoost cost model in the same role.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from ds_launch.autotuning.space import Experiment

History = Sequence[tuple[Experiment, float | None]]
RANDOM_SEED = 1234  # a fixed seed: rerunning a tuning explores in the same order


class GridSearchTuner:
    """Candidates in the order given (ascending micro batch, then knobs)."""

    def __init__(self, candidates: Sequence[Experiment]) -> None:
        self.pending = list(candidates)

    def next(self, history: History) -> Experiment | None:
        """The next experiment to run, or None when none is left."""
        return self.pending.pop(0) if self.pending else None

    def discard(self, drop: Callable[[Experiment], bool]) -> list[Experiment]:
        """Remove (and return) the pending candidates ``drop`` selects."""
        gone = [c for c in self.pending if drop(c)]
        self.pending = [c for c in self.pending if not drop(c)]
        return gone


class RandomTuner(GridSearchTuner):
    """Candidates in a random (seeded) order."""

    def __init__(self, candidates: Sequence[Experiment], seed: int = RANDOM_SEED) -> None:
        super().__init__(candidates)
        random.Random(seed).shuffle(self.pending)


class ModelBasedTuner(GridSearchTuner):
    """Runs the candidate a ridge regression on the measured experiments predicts best."""

    warmup = 3
    ridge = 1e-3

    def __init__(self, candidates: Sequence[Experiment]) -> None:
        super().__init__(candidates)
        self._encoder = _FeatureEncoder(candidates)

    def next(self, history: History) -> Experiment | None:
        measured = [(exp, value) for exp, value in history if value is not None]
        if not self.pending:
            return None
        if len(measured) < self.warmup:
            return self.pending.pop(self._farthest([exp for exp, _ in history]))
        weights = _ridge_fit([self._encoder(e) for e, _ in measured], [v for _, v in measured], self.ridge)
        scores = [sum(w * x for w, x in zip(weights, self._encoder(c), strict=True)) for c in self.pending]
        return self.pending.pop(scores.index(max(scores)))

    def _farthest(self, done: list[Experiment]) -> int:
        """Index of the pending candidate farthest (in feature space) from every experiment run so far."""
        if not done:
            return 0
        seen = [self._encoder(e) for e in done]

        def gap(exp: Experiment) -> float:
            x = self._encoder(exp)
            return min(sum((a - b) ** 2 for a, b in zip(x, y, strict=True)) for y in seen)

        gaps = [gap(c) for c in self.pending]
        return gaps.index(max(gaps))


def make_tuner(kind: str, candidates: Sequence[Experiment]) -> GridSearchTuner:
    """The tuner ``autotuning.tuner_type`` names."""
    return {"gridsearch": GridSearchTuner, "random": RandomTuner, "model_based": ModelBasedTuner}[kind](
        candidates
    )


class _FeatureEncoder:
    """Turns an experiment into a numeric feature vector (bias first)."""

    def __init__(self, candidates: Sequence[Experiment]) -> None:
        values: dict[str, list[object]] = {}
        for exp in candidates:
            for key, value in exp.knobs:
                values.setdefault(key, [])
                if value not in values[key]:
                    values[key].append(value)
        self._values = values

    def __call__(self, exp: Experiment) -> list[float]:
        out = [1.0, math.log2(exp.micro_batch)]
        knobs = dict(exp.knobs)
        for key, seen in sorted(self._values.items()):
            value = knobs.get(key)
            if isinstance(value, bool) or all(isinstance(v, bool) for v in seen):
                out.append(float(bool(value)))
            elif all(isinstance(v, (int, float)) and v > 0 for v in seen):
                out.append(math.log10(float(value)) if isinstance(value, (int, float)) and value > 0 else 0.0)
            else:
                out.extend(1.0 if value == v else 0.0 for v in seen)
        return out


def _ridge_fit(rows: list[list[float]], targets: list[float], ridge: float) -> list[float]:
    """Solve ``(X^T X + ridge I) w = X^T y`` by Gaussian elimination with partial pivoting."""
    n = len(rows[0])
    a = [[sum(r[i] * r[j] for r in rows) + (ridge if i == j else 0.0) for j in range(n)] for i in range(n)]
    b = [sum(r[i] * y for r, y in zip(rows, targets, strict=True)) for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot], b[col], b[pivot] = a[pivot], a[col], b[pivot], b[col]
        if abs(a[col][col]) < 1e-12:
            continue
        for row in range(col + 1, n):
            factor = a[row][col] / a[col][col]
            a[row] = [x - factor * y for x, y in zip(a[row], a[col], strict=True)]
            b[row] -= factor * b[col]
    weights = [0.0] * n
    for row in reversed(range(n)):
        if abs(a[row][row]) >= 1e-12:
            weights[row] = (b[row] - sum(a[row][j] * weights[j] for j in range(row + 1, n))) / a[row][row]
    return weights
