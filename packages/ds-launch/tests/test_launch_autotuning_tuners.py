"""Search orders: grid, random (seeded), model based (ridge regression)."""

from __future__ import annotations

import math

from ds_launch.autotuning.space import Experiment
from ds_launch.autotuning.tuners import GridSearchTuner, ModelBasedTuner, RandomTuner, _ridge_fit, make_tuner

CANDIDATES = [
    Experiment(1, mb, 1, 2, (("overlap_comm", oc),)) for mb in (1, 2, 4, 8, 16) for oc in (True, False)
]


def _drain(tuner, score=None):
    history, order = [], []
    while (exp := tuner.next(history)) is not None:
        order.append(exp)
        history.append((exp, score(exp) if score else None))
    return order


def test_grid_keeps_order_and_discards():
    tuner = GridSearchTuner(CANDIDATES)
    assert tuner.next([]) == CANDIDATES[0]
    gone = tuner.discard(lambda e: e.micro_batch >= 4)
    assert {e.micro_batch for e in gone} == {4, 8, 16} and len(gone) == 6
    assert _drain(tuner) == CANDIDATES[1:4]


def test_random_is_a_seeded_permutation():
    first, second = _drain(RandomTuner(CANDIDATES)), _drain(RandomTuner(CANDIDATES))
    assert first == second and sorted(first, key=CANDIDATES.index) == CANDIDATES and first != CANDIDATES
    assert _drain(RandomTuner(CANDIDATES, seed=7)) != first


def test_ridge_fit_recovers_a_linear_function():
    rows = [[1.0, x, y] for x in range(4) for y in range(3)]
    weights = _ridge_fit(rows, [2.0 + 3.0 * r[1] - 1.5 * r[2] for r in rows], 1e-9)
    assert all(math.isclose(w, t, abs_tol=1e-6) for w, t in zip(weights, [2.0, 3.0, -1.5], strict=True))


def test_model_based_goes_for_the_predicted_best():
    # A metric linear in the features (log2 micro batch, overlap on/off): three space-filling warm-up picks
    # determine it, after which the model must run the rest best first.
    score = lambda e: 10 * math.log2(e.micro_batch) + (0 if dict(e.knobs)["overlap_comm"] else 5)  # noqa: E731
    order = _drain(ModelBasedTuner(CANDIDATES), score)
    assert [(e.micro_batch, dict(e.knobs)["overlap_comm"]) for e in order[:3]] == [
        (1, True),
        (16, False),
        (4, True),
    ]
    rest = [score(e) for e in order[3:]]
    assert rest == sorted(rest, reverse=True) and len(order) == len(CANDIDATES)


def test_make_tuner():
    assert type(make_tuner("random", CANDIDATES)) is RandomTuner
    assert type(make_tuner("model_based", CANDIDATES)) is ModelBasedTuner
    assert type(make_tuner("gridsearch", CANDIDATES)) is GridSearchTuner
